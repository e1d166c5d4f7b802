"""Place, distance, age and sex on the web: city search, the API, the sign-up form and the manage page."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select
from structlog.testing import capture_logs

from alerts import places
from alerts.db import transaction
from alerts.models import Subscriber
from alerts.runtime import Runtime
from tests.factories import follow
from tests.web.journey import manage_token_of, teach

ARNHEM = places.gazetteer().search("Arnhem", limit=1)[0]


def stored(runtime: Runtime, email: str) -> tuple[Any, ...] | None:
    with transaction(runtime.engine) as session:
        row = session.execute(
            select(
                Subscriber.city_id,
                Subscriber.distance_km,
                Subscriber.distance_unit,
                Subscriber.recruiting_sites_only,
                Subscriber.age,
                Subscriber.sex,
            ).where(Subscriber.email == email)
        ).one_or_none()
    return tuple(row) if row is not None else None


def test_city_search_is_a_post_so_what_people_type_stays_out_of_urls(client: TestClient) -> None:
    found = client.post("/api/places", json={"q": "arnh"}).json()
    assert found[0] == {"id": ARNHEM.id, "label": "Arnhem, The Netherlands", "timezone": "Europe/Amsterdam"}
    assert client.get("/api/places", params={"q": "arnh"}).status_code == 405
    assert client.post("/api/places", json={"q": "a"}).status_code == 422


def test_preferences_api_reads_and_replaces_with_the_manage_token(client: TestClient, runtime: Runtime) -> None:
    follow(runtime, "a@example.org", condition="asthma")
    auth = {"Authorization": f"Bearer {manage_token_of(runtime, 'a@example.org')}"}
    assert client.get("/api/preferences").status_code == 401
    assert client.get("/api/preferences", headers={"Authorization": "Bearer nonsense"}).status_code == 401
    with capture_logs() as logs:
        answer = client.put(
            "/api/preferences",
            headers=auth,
            json={"city_id": ARNHEM.id, "distance": 25, "distance_unit": "mi", "age": 54, "sex": "female"},
        )
    assert answer.status_code == 200, answer.text
    assert answer.json()["city"] == "Arnhem, The Netherlands" and answer.json()["timezone"] == "Europe/Amsterdam"
    assert stored(runtime, "a@example.org") == (ARNHEM.id, 25 * 1.609344, "mi", False, 54, "FEMALE")
    assert "Arnhem" not in repr(logs) and "54" not in repr([e for e in logs if "subscriber_id" not in e])
    assert client.get("/api/preferences", headers=auth).json()["distance"] == 25
    bad = client.put("/api/preferences", headers=auth, json={"distance": 50})
    assert bad.status_code == 422 and "Choose a city" in bad.text
    assert client.put("/api/preferences", headers=auth, json={"age": 300}).status_code == 422
    # Everything optional: an empty body clears it all.
    assert client.put("/api/preferences", headers=auth, json={}).status_code == 200
    assert stored(runtime, "a@example.org") == (None, None, None, False, None, None)


def test_signup_api_takes_preferences_for_a_new_address_but_never_changes_an_active_one(
    client: TestClient, runtime: Runtime
) -> None:
    teach(runtime)  # the web signs people up only for conditions the vocabulary knows
    body = {"condition": "Acute-On-Chronic Liver Failure", "preferences": {"city": "Arnhem", "distance": 50, "age": 40}}
    assert client.post("/api/subscriptions", json={"email": "new@example.org"} | body).status_code == 202
    assert stored(runtime, "new@example.org") == (ARNHEM.id, 50.0, "km", False, 40, None)
    follow(runtime, "active@example.org", trial="NCT06740149")
    assert client.post("/api/subscriptions", json={"email": "active@example.org"} | body).status_code == 202
    assert stored(runtime, "active@example.org") == (None, None, None, False, None, None)
    bad = client.post(
        "/api/subscriptions",
        json={"email": "x@example.org", "condition": "Liver Failure", "preferences": {"distance": 50}},
    )
    assert bad.status_code == 422 and "Choose a city" in bad.text


def test_the_form_asks_for_each_part_saying_why_and_that_it_is_optional(client: TestClient, runtime: Runtime) -> None:
    page = client.get("/subscribe", headers={"Accept-Language": "en-US,en"}).text
    for why in (
        "to find study sites near you",
        "no site this close",
        "don't take people your age",
        "only women or only men",
    ):
        assert why in page
    assert page.count("(optional)") >= 5
    assert "Up to 25 miles" in page  # miles where people count in miles
    assert "Up to 25 km" in client.get("/subscribe", headers={"Accept-Language": "de-DE"}).text
    teach(runtime)
    form = {
        "email": "f@example.org",
        "condition": "Acute-On-Chronic Liver Failure",
        "city": "Arnhem",
        "distance": "100km",
        "age": "",
        "sex": "male",
    }
    answer = client.post("/subscribe", data=form, follow_redirects=False)
    assert answer.status_code == 303
    assert stored(runtime, "f@example.org") == (ARNHEM.id, 100.0, "km", False, None, "MALE")
    wrong = client.post("/subscribe", data=form | {"email": "g@example.org", "age": "old"})
    assert wrong.status_code == 422 and "whole number" in wrong.text
    assert 'value="Arnhem"' in wrong.text  # what they typed is kept
    assert stored(runtime, "g@example.org") is None  # nothing half-applied


def test_the_manage_page_shows_and_saves_them(client: TestClient, runtime: Runtime) -> None:
    follow(runtime, "m@example.org", condition="asthma")
    token = manage_token_of(runtime, "m@example.org")
    page = client.get(f"/manage/{token}").text
    assert "You haven't told us where you live" in page
    saved = client.post(
        f"/manage/{token}/preferences",
        data={"city": "Arnhem", "distance": "50km", "recruiting_sites_only": "yes", "age": "61"},
    )
    assert saved.status_code == 200 and "Your choices are saved." in saved.text
    assert "Near Arnhem, The Netherlands, within 50 km (open sites only)" in saved.text
    assert stored(runtime, "m@example.org") == (ARNHEM.id, 50.0, "km", True, 61, None)
    refused = client.post(f"/manage/{token}/preferences", data={"city": "Qqqqzzz"})
    assert refused.status_code == 422 and "know that city" in refused.text
    assert stored(runtime, "m@example.org") == (ARNHEM.id, 50.0, "km", True, 61, None)
