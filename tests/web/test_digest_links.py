"""Digest links and choices over HTTP: the RFC 8058 one-click link of a digest, the manage page's
frequency and time forms, and the digest fields of POST /api/subscriptions."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import select

from alerts import vocabulary
from alerts.db import transaction
from alerts.digests.windows import DAILY, next_close
from alerts.models import Subscriber, SubscriptionStatus, utcnow
from alerts.pipeline import digest_tick, ingest
from alerts.runtime import Runtime
from alerts.transports.memory import MemoryTransport
from tests.conftest import InlineEnqueue, study
from tests.factories import changed_event, follow, new_trial_event, open_recruitment
from tests.web.journey import BASE, link_in, subscriptions_of

TRIAL = "NCT00124774"
CONDITION = "Herniated Disc"


def a_digest(runtime: Runtime, inline: InlineEnqueue, memory: MemoryTransport, email: str) -> str:
    """Pat follows the trial and the condition daily plus a third alert immediately; one digest arrives.
    Returns its List-Unsubscribe path."""
    record = study(TRIAL)
    ingest(runtime, changed_event(record), inline, source="test")
    follow(runtime, email, trial=TRIAL, frequency="daily")
    follow(runtime, email, condition=CONDITION, frequency="daily")
    follow(runtime, email, trial="NCT00763412")  # immediate, not in the digest
    ingest(runtime, changed_event(open_recruitment(record), occurred_at="2026-12-01T09:00:00Z"), inline, source="t")
    ingest(runtime, new_trial_event(record, CONDITION, occurred_at="2026-12-01T10:00:00Z"), inline, source="t")
    memory.clear()
    from zoneinfo import ZoneInfo

    digest_tick(runtime, inline.send_digests, now=next_close(utcnow(), ZoneInfo("UTC"), 8, 0, DAILY))
    [message] = memory.messages
    header = "".join(str(message["List-Unsubscribe"]).split()).strip("<>")
    assert header.startswith(f"{BASE}/unsubscribe/digest/")
    return header.removeprefix(BASE)


def test_one_click_of_a_digest_ends_every_alert_it_carried(
    client: TestClient, runtime: Runtime, inline: InlineEnqueue, memory: MemoryTransport
) -> None:
    path = a_digest(runtime, inline, memory, "pat@example.org")
    # GET (a mail scanner, or the subscriber) only shows what would stop.
    page = client.get(path)
    assert page.status_code == 200
    assert "Stop the alerts in this digest?" in page.text
    with transaction(runtime.engine) as session:
        # Named by what the phrase means (alerts.subscriptions.shown), never by the words typed.
        name = vocabulary.meaning(session, CONDITION).name or CONDITION
    assert f"changes to study {TRIAL}".lower() in page.text.lower()
    assert f"new studies for {name}".lower() in page.text.lower()
    assert [s.status for s in subscriptions_of(runtime, "pat@example.org")] == ["active"] * 3
    # What Gmail sends for RFC 8058: a form POST, no cookies.
    answer = client.post(path, data={"List-Unsubscribe": "One-Click"})
    assert answer.status_code == 200
    assert "We stopped every alert this digest had news from" in answer.text
    statuses = {s.target: s.status for s in subscriptions_of(runtime, "pat@example.org")}
    assert statuses[TRIAL] == SubscriptionStatus.UNSUBSCRIBED
    assert statuses["NCT00763412"] == SubscriptionStatus.ACTIVE, "an alert the digest did not carry stays"
    assert [v for k, v in statuses.items() if k not in (TRIAL, "NCT00763412")] == [SubscriptionStatus.UNSUBSCRIBED]
    assert "/manage/" in answer.text, "the finer choice is one click away"
    assert client.post(path, data={"List-Unsubscribe": "One-Click"}).status_code == 200  # twice: harmless


def test_a_tampered_digest_link_is_a_clear_page(client: TestClient) -> None:
    answer = client.post("/unsubscribe/digest/MQ.forged", data={"List-Unsubscribe": "One-Click"})
    assert answer.status_code == 400 and "This link doesn" in answer.text


def test_manage_page_changes_frequency_and_time(
    client: TestClient, runtime: Runtime, inline: InlineEnqueue, memory: MemoryTransport
) -> None:
    subscription_id = follow(runtime, "pat@example.org", trial=TRIAL)
    with transaction(runtime.engine) as session:
        token = session.scalar(select(Subscriber.manage_token))
    page = client.get(f"/manage/{token}")
    assert "How often" in page.text and 'value="immediately" selected' in page.text
    answer = client.post(f"/manage/{token}/digest", data={"subscription": subscription_id, "frequency": "weekly"})
    assert answer.status_code == 200 and "once a week" in answer.text
    answer = client.post(
        f"/manage/{token}/digest", data={"time_zone": "America/St_Johns", "digest_hour": "7", "digest_weekday": "4"}
    )
    assert answer.status_code == 200 and "07:00, America/St_Johns; weekly on Fridays" in answer.text
    with transaction(runtime.engine) as session:
        subscriber = session.scalar(select(Subscriber))
        assert subscriber is not None and subscriber.digest_cadence == "weekly"
        assert subscriber.digest_due_at is not None
        local = subscriber.digest_due_at.astimezone(__import__("zoneinfo").ZoneInfo("America/St_Johns"))
        assert (local.weekday(), local.hour, local.minute) == (4, 7, 0)
    bad = client.post(f"/manage/{token}/digest", data={"time_zone": "Mars/Olympus_Mons"})
    assert bad.status_code == 400 and "IANA" in bad.text
    # Someone else's subscription id in the form changes nothing.
    other = follow(runtime, "sam@example.org", trial=TRIAL)
    client.post(f"/manage/{token}/digest", data={"subscription": other, "frequency": "daily"})
    assert [s.frequency for s in subscriptions_of(runtime, "sam@example.org")] == ["immediately"]


def test_the_zone_menu_lists_places_and_an_old_name_stays_chosen(client: TestClient, runtime: Runtime) -> None:
    follow(runtime, "pat@example.org", trial=TRIAL)
    with transaction(runtime.engine) as session:
        token = session.scalar(select(Subscriber.manage_token))
    page = client.get(f"/manage/{token}").text
    # One zone per country region, UTC first; no duplicate old names, no backwards-signed Etc/GMT+5.
    for zone in ("Europe/Amsterdam", "Asia/Kolkata"):
        assert f"<option>{zone}</option>" in page
    assert "<option selected>UTC</option>" in page
    for old in (">US/Eastern<", ">Asia/Calcutta<", ">Etc/GMT+5<", ">EST5EDT<"):
        assert old not in page
    # A browser may report an old name (Chrome: Asia/Calcutta); the form accepts it and keeps it chosen.
    answer = client.post(f"/manage/{token}/digest", data={"time_zone": "Asia/Calcutta"})
    assert answer.status_code == 200
    page = client.get(f"/manage/{token}").text
    assert page.count(" selected>") >= 1 and "<option selected>Asia/Calcutta</option>" in page
    assert "<option selected>UTC</option>" not in page


def test_api_sign_up_with_a_daily_digest_in_a_time_zone(
    client: TestClient, runtime: Runtime, memory: MemoryTransport
) -> None:
    body = {
        "email": "pat@example.org",
        "trial": TRIAL,
        "frequency": "daily",
        "time_zone": "Asia/Shanghai",
        "digest_hour": 7,
    }
    assert client.post("/api/subscriptions", json=body).status_code == 202
    [subscription] = subscriptions_of(runtime, "pat@example.org")
    assert subscription.frequency == "daily"
    with transaction(runtime.engine) as session:
        subscriber = session.scalar(select(Subscriber))
        assert subscriber is not None
        assert (subscriber.time_zone, subscriber.digest_hour, subscriber.digest_cadence) == (
            "Asia/Shanghai",
            7,
            "daily",
        )
    assert link_in(memory.messages[-1], "confirm")  # double opt-in as for every alert
    for bad in ({"frequency": "hourly"}, {"time_zone": "Europe/Atlantis"}, {"digest_hour": 24}, {"digest_weekday": 7}):
        answer = client.post("/api/subscriptions", json={"email": "sam@example.org", "trial": TRIAL} | bad)
        assert answer.status_code == 422, bad
    assert subscriptions_of(runtime, "sam@example.org") == []


def test_a_strangers_form_cannot_move_an_active_subscribers_digest(
    client: TestClient, runtime: Runtime, memory: MemoryTransport
) -> None:
    follow(runtime, "pat@example.org", trial=TRIAL, frequency="daily")
    body = {"email": "pat@example.org", "trial": "NCT06740149", "frequency": "daily", "time_zone": "Asia/Tokyo"}
    assert client.post("/api/subscriptions", json=body).status_code == 202
    with transaction(runtime.engine) as session:
        subscriber = session.scalar(select(Subscriber))
        assert subscriber is not None and subscriber.time_zone == "UTC"


def test_sign_up_form_offers_frequency_and_time_zone(client: TestClient) -> None:
    page = client.get(f"/subscribe?trial={TRIAL}")
    assert page.status_code == 200
    for needle in ('name="frequency"', 'value="daily"', 'id="time_zone"', "America/St_Johns", "/static/timezone.js"):
        assert needle in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    answer = client.post(
        "/subscribe", data={"email": "pat@example.org", "trial": TRIAL, "frequency": "weekly", "time_zone": "Nowhere"}
    )
    assert answer.status_code == 422 and "IANA" in answer.text
    assert 'value="weekly" checked' in answer.text, "the choice is kept when the form comes back"


def a_long_digest(runtime: Runtime, inline: InlineEnqueue, memory: MemoryTransport, email: str) -> list[str]:
    """Pat follows 16 studies daily and all of them change: more than one email's byte budget. Returns the
    studies' ids."""
    import json
    from pathlib import Path

    paths = sorted(Path(__file__).resolve().parents[1].joinpath("fixtures", "ctgov", "studies").glob("NCT*.json"))
    records = [json.loads(p.read_text()) for p in paths[:16]]
    ncts = [r["protocolSection"]["identificationModule"]["nctId"] for r in records]
    for record in records:
        ingest(runtime, changed_event(record), inline, source="test")
    for nct in ncts:
        follow(runtime, email, trial=nct, frequency="daily")
    for record in records:
        changed = open_recruitment(record)
        if record["protocolSection"].get("statusModule", {}).get("overallStatus") == "RECRUITING":
            changed["protocolSection"]["statusModule"]["overallStatus"] = "COMPLETED"
        ingest(runtime, changed_event(changed, occurred_at="2026-12-01T09:00:00Z"), inline, source="t")
    memory.clear()
    from zoneinfo import ZoneInfo

    digest_tick(runtime, inline.send_digests, now=next_close(utcnow(), ZoneInfo("UTC"), 8, 0, DAILY))
    return ncts


def test_a_digest_too_long_for_one_email_links_to_its_whole_page(
    client: TestClient, runtime: Runtime, inline: InlineEnqueue, memory: MemoryTransport
) -> None:
    from alerts.digests.send import MAX_SUBSTITUTION_BYTES
    from alerts.transports.sendgrid import substitution_bytes

    ncts = a_long_digest(runtime, inline, memory, "pat@example.org")
    [batch] = memory.batches
    [recipient] = batch.recipients
    [message] = memory.messages
    body = message.get_body(("plain",))
    assert body is not None
    text = str(body.get_content())
    shown = [nct for nct in ncts if f"({nct})" in text]
    assert 0 < len(shown) < len(ncts)
    more = len(ncts) - len(shown)
    assert f"{more} more change{'s' if more != 1 else ''} did not fit in this email" in text
    # Every personalization stays under SendGrid's substitutions limit, with room to spare.
    assert recipient.parts is not None, "sent packed: its own entries as substitutions"
    substitutions = {f"%%part_{k}%%": v for k, v in recipient.parts.items()} | {
        f"%%{k}%%": v for k, v in recipient.values.items()
    }
    assert substitution_bytes(substitutions) <= MAX_SUBSTITUTION_BYTES - 500
    [url] = [w for w in text.split() if "/digest/" in w and "/unsubscribe/" not in w]
    path = url.removeprefix(BASE)
    assert path.startswith("/digest/") and "pat" not in path
    # The page shows every entry, with the email's stop links and the digest's own one-click page.
    statuses = [s.status for s in subscriptions_of(runtime, "pat@example.org")]
    page = client.get(path)
    assert page.status_code == 200
    assert all(f"({nct})" in page.text for nct in ncts)
    assert page.text.count('href="/unsubscribe/') == len(ncts) + 1
    assert "/unsubscribe/digest/" in page.text and "/manage/" in page.text
    assert ' style="' not in page.text.split('<div class="digest">', 1)[1]
    assert client.head(path).status_code == 200
    assert [s.status for s in subscriptions_of(runtime, "pat@example.org")] == statuses, "GET changes nothing"
    # A stopped alert leaves the page; a bad link is a clear page; an erased subscriber's digest is gone.
    first_stop = page.text.split('href="/unsubscribe/', 1)[1].split('"', 1)[0]
    client.post(f"/unsubscribe/{first_stop}")
    assert client.get(path).text.count('href="/unsubscribe/') == len(ncts)
    bad = client.get(path[:-3] + ("xyz" if not path.endswith("xyz") else "abc"))
    assert bad.status_code == 400 and "This link doesn" in bad.text
    from alerts import subscriptions

    with transaction(runtime.engine) as session:
        subscriber_id = session.scalar(select(Subscriber.id).where(Subscriber.email == "pat@example.org"))
        assert subscriber_id is not None
        subscriptions.erase(session, subscriber_id)
    gone = client.get(path)
    assert gone.status_code == 404 and "no longer valid" in gone.text


def test_one_click_and_unsubscribe_all_drop_what_the_alerts_still_hold(
    client: TestClient, runtime: Runtime, inline: InlineEnqueue, memory: MemoryTransport
) -> None:
    """The link pages' POST (its own statements on PostgreSQL) drops held items as subscriptions.unsubscribe and
    unsubscribe_all do: what is still held goes, what a closed digest window already carries stays."""
    from zoneinfo import ZoneInfo

    from sqlalchemy import func

    from alerts.digests.preferences import DigestPreferences
    from alerts.models import HeldItem, Subscription
    from alerts.tokens import Purpose

    record, other = study(TRIAL), study("NCT00763412")
    ingest(runtime, changed_event(record), inline, source="test")
    ingest(runtime, changed_event(other), inline, source="test")
    # kept@'s digest hour comes first; the others' two hours later.
    hour = (utcnow().hour + 1) % 24
    later = DigestPreferences.parse("UTC", f"{(hour + 2) % 24:02d}:00", "Monday")
    one = follow(runtime, "one@example.org", trial=TRIAL, frequency="daily", preferences=later)
    every = [
        follow(runtime, "all@example.org", trial=t, frequency="daily", preferences=later)
        for t in (TRIAL, "NCT00763412")
    ]
    first = DigestPreferences.parse("UTC", f"{hour:02d}:00", "Monday")
    kept = follow(runtime, "kept@example.org", trial=TRIAL, frequency="daily", preferences=first)
    ingest(runtime, changed_event(open_recruitment(record), occurred_at="2026-12-01T09:00:00Z"), inline, source="t")
    ingest(runtime, changed_event(open_recruitment(other), occurred_at="2026-12-01T09:00:00Z"), inline, source="t")

    def held() -> dict[int, int]:
        with transaction(runtime.engine) as session:
            rows = session.execute(select(HeldItem.subscription_id, func.count()).group_by(HeldItem.subscription_id))
            return {int(s): int(n) for s, n in rows}

    assert held() == {one: 1, every[0]: 1, every[1]: 1, kept: 1}
    # kept@'s window closes: its item is now carried by a digest (and stays, like every carried item).
    digest_tick(runtime, inline.send_digests, now=next_close(utcnow(), ZoneInfo("UTC"), hour, 0, DAILY))
    token = {s: runtime.signer.sign(Purpose.UNSUBSCRIBE, s) for s in (one, every[0], kept)}
    one_click = {"List-Unsubscribe": "One-Click"}
    assert client.post(f"/unsubscribe/{token[one]}", data=one_click).status_code == 200
    assert client.post(f"/unsubscribe/{token[every[0]]}", data={"scope": "all"}).status_code == 200
    assert client.post(f"/unsubscribe/{token[kept]}", data=one_click).status_code == 200
    assert held() == {kept: 1}
    with transaction(runtime.engine) as session:
        statuses = {s.id: s.status for s in session.scalars(select(Subscription))}
    assert set(statuses.values()) == {SubscriptionStatus.UNSUBSCRIBED}
