"""Places: the gazetteer, distances in SQL, and who gets which trial by place, age and sex (issue 16)."""

from __future__ import annotations

import copy
import math
import re
from typing import Any

import pytest
from sqlalchemy import select

from alerts import emails, places, preferences, subscriptions
from alerts.db import transaction
from alerts.eligibility import Eligibility
from alerts.models import City, EventContent, Subscriber, TrialSite
from alerts.pipeline import ingest
from alerts.rendering import Renderer
from alerts.runtime import Runtime
from alerts.transports.memory import MemoryTransport
from tests.conftest import InlineEnqueue, study
from tests.factories import changed_event, follow, new_trial_event

CONDITION = "Followed Illness"
STUDIES = (
    "NCT00124774",  # Arnhem, Netherlands; 18-60
    "NCT00868335",  # Netherlands; 18-55
    "NCT01640457",  # 10 sites in Austria and Germany
    "NCT04631133",  # Denmark, France, Germany
    "NCT04948307",  # 21 sites in the United States
    "NCT03608150",  # children 4-7, United States
    "NCT04853849",  # women 40 and older, United States
    "NCT00973089",  # children 5-8, Israel
)
NO_COORDINATES = "NCT04573296"


def independent_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance written out again here, not imported: the check must not share the code."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    h = (
        math.sin((phi2 - phi1) / 2) ** 2
        + math.cos(phi1) * math.cos(phi2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    )
    return 2 * 6371.0 * math.asin(math.sqrt(h))


def recruiting(record: dict[str, Any]) -> dict[str, Any]:
    """Recruiting, with every other site open (so "open sites only" differs from "any site")."""
    edited = copy.deepcopy(record)
    edited["protocolSection"]["statusModule"]["overallStatus"] = "RECRUITING"
    for seq, site in enumerate(edited["protocolSection"]["contactsLocationsModule"]["locations"]):
        site["status"] = "RECRUITING" if seq % 2 == 0 else "COMPLETED"
    return edited


def city(name: str) -> places.Place:
    found = places.gazetteer().search(name, limit=1)
    assert found, name
    return found[0]


def test_gazetteer_finds_cities_offline_with_their_time_zone() -> None:
    arnhem = city("arnh")
    assert arnhem.label == "Arnhem, The Netherlands"
    assert places.timezone_of(arnhem.id) == "Europe/Amsterdam"
    assert city("Munich").name == "Munich" and city("Muenchen").id == city("München").id
    assert city("springfield, il").label == "Springfield, IL, United States"
    assert places.gazetteer().search("x") == []  # one letter is not a search
    assert places.timezone_of(-1) is None


def test_units_follow_the_locale() -> None:
    assert places.unit_for_locale("en-US,en;q=0.9") == "mi"
    assert places.unit_for_locale("en-GB") == "mi"
    assert places.unit_for_locale("de-DE,de") == "km"
    assert places.unit_for_locale(None) == "km"
    assert places.round_distance(places.to_km(25, "mi"), "mi") == 25


def test_distances_in_sql_are_the_great_circle_distance(runtime: Runtime) -> None:
    """The SQL nearest-site table agrees with an independent computation, on both engines."""
    record = study("NCT04948307")
    chosen = [city(name) for name in ("Boston", "Chicago", "Houston", "Seattle", "Miami", "Anchorage", "Suva")]
    with transaction(runtime.engine) as session:
        places.store_sites(session, "NCT04948307", record)
        for place in chosen:
            places.remember_city(session, place)
    with transaction(runtime.engine) as session:
        near = places.nearest_sites()
        rows = {r.city_id: r for r in session.execute(select(near), {"near_nct_id": "NCT04948307"})}
    sites = [s for s in places.sites(record) if s.lat is not None]
    for place in chosen:
        distances = sorted((independent_km(place.lat, place.lon, s.lat, s.lon), s.seq) for s in sites)  # type: ignore[arg-type]
        km, seq = distances[0]
        row = rows[place.id]
        if km > 500 * 1.609344:
            assert row.any_km is None, place.label
        else:
            assert row.any_seq == seq and row.any_km == pytest.approx(km, abs=0.001), place.label


PROFILES: list[dict[str, Any]] = [
    {"city": "Nijmegen", "distance": 25},
    {"city": "Nijmegen", "distance": 50, "age": 70},
    {"city": "Amsterdam", "distance": 100},
    {"city": "Amsterdam", "distance": 50},
    {"city": "Munich", "distance": 100, "recruiting_sites_only": True},
    {"city": "Munich", "distance": 250},
    {"city": "Paris", "distance": 500, "unit": "mi"},
    {"city": "Boston", "distance": 250, "unit": "mi", "sex": "MALE"},
    {"city": "Chicago", "distance": 500, "age": 6},
    {"city": "Tel Aviv", "distance": 100, "age": 6},
    {"city": "Tel Aviv", "sex": "FEMALE", "age": 45},  # a place, no distance limit
    {"age": 30},
    {},
]


def expected(profile: dict[str, Any], record: dict[str, Any]) -> bool:
    if not Eligibility.of(record).accepts(profile.get("age"), profile.get("sex")):
        return False
    if "distance" not in profile:
        return True
    place = city(profile["city"])
    limit = profile["distance"] * (1.609344 if profile.get("unit") == "mi" else 1)
    sites = [s for s in places.sites(record) if s.lat is not None and s.lon is not None]
    if profile.get("recruiting_sites_only"):
        sites = [s for s in sites if s.status == "RECRUITING"]
    return any(independent_km(place.lat, place.lon, s.lat, s.lon) <= limit for s in sites)  # type: ignore[arg-type]


def place_follower(runtime: Runtime, email: str, profile: dict[str, Any]) -> None:
    follow(runtime, email, condition=CONDITION)
    chosen = preferences.parse(
        city=city(profile["city"]).id if "city" in profile else None,
        distance=profile.get("distance"),
        unit=profile.get("unit", "km"),
        recruiting_sites_only=profile.get("recruiting_sites_only", False),
        age=profile.get("age"),
        sex=profile.get("sex"),
    )
    with transaction(runtime.engine) as session:
        subscriber = session.scalar(select(Subscriber).where(Subscriber.email == email))
        assert subscriber is not None
        preferences.set_preferences(session, subscriber.id, chosen)


def test_followers_get_exactly_the_trials_with_a_site_within_their_distance_that_accept_them(
    runtime: Runtime, inline: InlineEnqueue, memory: MemoryTransport
) -> None:
    for n, profile in enumerate(PROFILES):
        place_follower(runtime, f"p{n}@example.org", profile)
    records = {nct: recruiting(study(nct)) for nct in STUDIES}
    bare = copy.deepcopy(study(NO_COORDINATES))
    for site in bare["protocolSection"]["contactsLocationsModule"]["locations"]:
        site.pop("geoPoint", None)
    records[NO_COORDINATES] = bare
    for record in records.values():
        ingest(runtime, new_trial_event(record, CONDITION), inline, "test")
    got: dict[str, set[str]] = {nct: set() for nct in records}
    texts: dict[tuple[str, str], str] = {}
    for message in memory.messages:
        nct = re.search(r"NCT\d{8}", str(message["Subject"]) + message.get_body(("plain",)).get_content())  # type: ignore[union-attr]
        assert nct is not None
        got[nct.group(0)].add(str(message["To"]))
        texts[(nct.group(0), str(message["To"]))] = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    for nct, record in records.items():
        want = {f"p{n}@example.org" for n, profile in enumerate(PROFILES) if expected(profile, record)}
        assert got[nct] == want, nct
    # A trial without site coordinates reaches only those without a distance limit.
    assert got[NO_COORDINATES] == {f"p{n}@example.org" for n, p in enumerate(PROFILES) if "distance" not in p}
    # Placed readers of a recruiting study are told their nearest open site and its distance.
    arnhem = texts[("NCT00124774", "p0@example.org")]
    site = places.sites(records["NCT00124774"])[0]
    nijmegen = city("Nijmegen")
    km = independent_km(nijmegen.lat, nijmegen.lon, site.lat, site.lon)  # type: ignore[arg-type]
    assert f"The nearest open site is {round(km)} km from you:" in arnhem
    assert "Rijnstate Hospital, Arnhem, Netherlands" in arnhem
    assert "Who can join: Adults 18 to 60; all sexes." in arnhem
    assert "Talk to your doctor before you contact the study." in arnhem
    unplaced = texts[("NCT00124774", "p12@example.org")]
    assert "Add your city on your alerts page." in unplaced


def test_a_new_site_near_a_follower_leads_their_change_alert_one_rendering_per_outcome(
    runtime: Runtime, inline: InlineEnqueue, memory: MemoryTransport
) -> None:
    old = recruiting(study("NCT00124774"))
    new = copy.deepcopy(old)
    new["protocolSection"]["contactsLocationsModule"]["locations"].append(
        {
            "facility": "Radboud University Medical Center",
            "city": "Nijmegen",
            "country": "Netherlands",
            "status": "RECRUITING",
            "geoPoint": {"lat": 51.8246, "lon": 5.8606},
        }
    )
    nijmegen = city("Nijmegen")
    km = round(independent_km(nijmegen.lat, nijmegen.lon, 51.8246, 5.8606))
    for n in range(3):  # three readers in one city share one outcome
        follow(runtime, f"near{n}@example.org", trial="NCT00124774")
        place_follower_prefs(runtime, f"near{n}@example.org", city("Nijmegen").id, 25)
    follow(runtime, "far@example.org", trial="NCT00124774")
    place_follower_prefs(runtime, "far@example.org", city("Paris").id, 25)
    follow(runtime, "nowhere@example.org", trial="NCT00124774")
    ingest(runtime, changed_event(new, previous=old), inline, "test")
    by_to = {str(m["To"]): m for m in memory.messages}
    assert len(by_to) == 5
    near = by_to["near0@example.org"]
    assert str(near["Subject"]).startswith(f"A new site opened {km} km from you and ")
    text = near.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert text.index(f"A new site opened {km} km from you") < text.index("* New study site")
    assert "You may be able to join close to home." in text
    assert f"The nearest open site is {km} km from you:" in text
    assert "A new site opened" not in by_to["far@example.org"].get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert not str(by_to["far@example.org"]["Subject"]).startswith("A new site")
    assert str(by_to["nowhere@example.org"]["Subject"]).startswith("New site in Nijmegen")
    # Three outcomes: three readers in Nijmegen, one in Paris, one without a place; the email is rendered
    # (premailer) once, each outcome's fragments once, and one send carries all five.
    assert len({m.get_body(("plain",)).get_content().split("Unsubscribe")[0] for m in memory.messages}) == 3  # type: ignore[union-attr]
    assert len(memory.batches) == 1
    with transaction(runtime.engine) as session:
        stored = session.scalars(select(EventContent.variant)).all()
    assert sorted(v.count(places.OUTCOME_SEPARATOR) for v in stored) == [1, 1, 1]


def test_a_batch_without_places_carries_the_fragments_in_the_rendering_not_per_recipient(
    runtime: Runtime, inline: InlineEnqueue, memory: MemoryTransport
) -> None:
    old = recruiting(study("NCT00124774"))
    new = copy.deepcopy(old)
    new["protocolSection"]["statusModule"]["overallStatus"] = "ACTIVE_NOT_RECRUITING"
    for n in range(3):
        follow(runtime, f"reader{n}@example.org", trial="NCT00124774")
    ingest(runtime, changed_event(new, previous=old), inline, "test")
    assert len(memory.batches) == 1
    # Only the links differ per reader: the fragments of readers without a place are the same for all.
    assert {frozenset(r.values) for r in memory.batches[0].recipients} == {frozenset({"unsubscribe_url", "manage_url"})}
    assert len(memory.messages) == 3
    for message in memory.messages:
        for part in ("plain", "html"):
            body = message.get_body((part,))
            assert body is not None and "%%" not in body.get_content()
        assert "%%" not in str(message["Subject"])


def place_follower_prefs(runtime: Runtime, email: str, city_id: int, distance: int) -> None:
    with transaction(runtime.engine) as session:
        subscriber = session.scalar(select(Subscriber).where(Subscriber.email == email))
        assert subscriber is not None
        preferences.set_preferences(session, subscriber.id, preferences.Preferences(city_id, distance))


def test_only_city_and_distance_are_stored_and_erasure_removes_them(runtime: Runtime) -> None:
    follow(runtime, "private@example.org", condition=CONDITION)
    with transaction(runtime.engine) as session:
        subscriber = session.scalar(select(Subscriber).where(Subscriber.email == "private@example.org"))
        assert subscriber is not None
        chosen = preferences.parse(city_name="Arnhem", distance="50km", age="54", sex="female")
        preferences.set_preferences(session, subscriber.id, chosen)
        subscriber_id = subscriber.id
    with transaction(runtime.engine) as session:
        stored = session.get(Subscriber, subscriber_id)
        assert stored is not None
        assert (stored.city_id, stored.distance_km, stored.age, stored.sex) == (city("Arnhem").id, 50.0, 54, "FEMALE")
        # The cities table holds the gazetteer's public row, not anything about the person.
        assert session.get(City, city("Arnhem").id) is not None
        subscriptions.erase(session, subscriber_id)
    with transaction(runtime.engine) as session:
        assert session.get(Subscriber, subscriber_id) is None


def test_preferences_are_validated_with_plain_messages() -> None:
    with pytest.raises(preferences.InvalidPreference, match="Choose a city"):
        preferences.parse(distance="50km")
    with pytest.raises(preferences.InvalidPreference, match="distance of 25, 50, 100, 250, 500"):
        preferences.parse(city_name="Arnhem", distance="30km")
    with pytest.raises(preferences.InvalidPreference, match="whole number"):
        preferences.parse(age="-3")
    with pytest.raises(preferences.InvalidPreference, match="female or male"):
        preferences.parse(sex="x")
    with pytest.raises(preferences.InvalidPreference, match="don't know that city"):
        preferences.parse(city=999999999)
    assert preferences.parse(city_name="Arnhem", distance="25mi").distance_km == pytest.approx(40.2336)
    assert preferences.parse() == preferences.Preferences()


def test_sites_without_valid_coordinates_are_not_stored(runtime: Runtime) -> None:
    record = copy.deepcopy(study("NCT00124774"))
    locations = record["protocolSection"]["contactsLocationsModule"]["locations"]
    locations.append({"city": "Nowhere", "geoPoint": {"lat": 123.0, "lon": 5.0}})
    locations.append({"city": "Nowhere", "geoPoint": {"lat": "51", "lon": 5.0}})
    with transaction(runtime.engine) as session:
        places.store_sites(session, "NCT00124774", record)
    with transaction(runtime.engine) as session:
        assert session.scalars(select(TrialSite.seq).where(TrialSite.nct_id == "NCT00124774")).all() == [0]


def test_how_to_take_part_names_a_contact_the_central_one_else_the_nearest_sites() -> None:
    renderer = Renderer()

    def said(record: dict[str, Any], outcome: places.Outcome | None, shared: dict[str, Any]) -> str:
        """The text the nearest-site and contact slots put under "How to take part", in order."""
        fragments = emails.near_fragments(renderer, record, outcome, shared)
        return fragments["near_site"][0] + fragments["near_contact"][0]

    record = recruiting(study("NCT00124774"))
    site = record["protocolSection"]["contactsLocationsModule"]["locations"][0]
    site["contacts"] = [{"name": "Research desk", "phone": "+31 88 005 8888", "email": "trials@example.org"}]
    shared = emails.trial_changed(record, [])
    nearest = places.Outcome("km", {"open": (0, 16)})
    text = said(record, nearest, shared)
    assert "The nearest open site is 16 km from you:" in text
    assert "Contact at this site: Research desk, +31 88 005 8888, trials@example.org" in text
    # Without a place: the first open site that lists a contact, named.
    text = said(record, None, shared)
    assert "Contact at Rijnstate Hospital, Arnhem, Netherlands: Research desk" in text
    # With a central contact, that one is in the shared part and the fragment adds none.
    record["protocolSection"]["contactsLocationsModule"]["centralContacts"] = [
        {"name": "Study office", "phone": "+31 26 000 0000"}
    ]
    shared = emails.trial_changed(record, [])
    assert shared["trial"]["take_part"]["contact"] == "Study office, +31 26 000 0000"
    assert "Contact" not in said(record, nearest, shared)
    # No contact anywhere: said so.
    bare = recruiting(study("NCT00124774"))
    text = said(bare, nearest, emails.trial_changed(bare, []))
    assert "The record lists no contact yet." in text


def test_sites_are_written_only_when_they_changed(runtime: Runtime) -> None:
    record = study("NCT00124774")
    with transaction(runtime.engine) as session:
        places.store_sites(session, "NCT00124774", record)
    moved = copy.deepcopy(record)
    site = moved["protocolSection"]["contactsLocationsModule"]["locations"][0]
    site["status"] = "RECRUITING"
    # Given the stored version: unchanged rows are not rewritten (a stray row would survive), changed ones are.
    with transaction(runtime.engine) as session:
        session.add(TrialSite(nct_id="NCT00124774", seq=99, lat=1.0, lon=1.0, recruiting=False))
    with transaction(runtime.engine) as session:
        places.store_sites(session, "NCT00124774", copy.deepcopy(record), record)
    with transaction(runtime.engine) as session:
        assert 99 in session.scalars(select(TrialSite.seq).where(TrialSite.nct_id == "NCT00124774")).all()
    with transaction(runtime.engine) as session:
        places.store_sites(session, "NCT00124774", moved, record)
    with transaction(runtime.engine) as session:
        rows = session.execute(select(TrialSite.seq, TrialSite.recruiting).where(TrialSite.nct_id == "NCT00124774"))
        assert sorted(rows) == [(s.seq, s.recruiting) for s in places.sites(moved) if s.lat is not None]
