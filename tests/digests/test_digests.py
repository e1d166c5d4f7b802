"""Digests end to end in one process, on SQLite and PostgreSQL, with a clock the test controls.

Events go through the real pipeline (matching holds them), ``pipeline.digest_tick(now=...)`` closes
windows, sending goes through the memory transport; what each address receives is read from the MIME
messages as they would go on the wire.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select

from alerts import subscriptions, suppressions
from alerts.db import transaction
from alerts.digests.preferences import DigestPreferences, set_frequency, set_preferences
from alerts.digests.windows import DAILY, WEEKLY, next_close
from alerts.models import Digest, DigestStatus, HeldItem, Subscriber, utcnow
from alerts.pipeline import digest_tick, ingest
from alerts.runtime import Runtime
from alerts.transports.memory import MemoryTransport
from tests.conftest import FIXTURES, InlineEnqueue, study
from tests.factories import changed_event, follow, new_trial_event, open_recruitment, per_recipient

TRIAL = "NCT00124774"  # Herniated Disc
OTHER = "NCT00763412"
PAIR = FIXTURES / "ctgov" / "pairs" / "NCT02552212"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def close_after(zone_name: str = "UTC", hour: int = 8, weekday: int = 0, cadence: str = DAILY) -> datetime:
    """The subscriber's next window close after the real clock (held items carry the real time)."""
    return next_close(utcnow(), ZoneInfo(zone_name), hour, weekday, cadence)


def pair() -> tuple[dict[str, Any], dict[str, Any]]:
    """Two real versions of NCT02552212 that differ only by noise (dates, derivedSection order)."""
    older = json.loads((PAIR / "version-2023-12-12.json").read_text())
    newer = json.loads((PAIR / "version-2024-01-03.json").read_text())
    return older, newer


def with_status(record: dict[str, Any], status: str) -> dict[str, Any]:
    edited = copy.deepcopy(record)
    edited["protocolSection"]["statusModule"]["overallStatus"] = status
    return edited


def with_enrollment(record: dict[str, Any], count: int) -> dict[str, Any]:
    edited = copy.deepcopy(record)
    edited["protocolSection"]["designModule"]["enrollmentInfo"]["count"] = count
    return edited


def text(message: EmailMessage) -> str:
    body = message.get_body(("plain",))
    assert body is not None
    return str(body.get_content())


def html(message: EmailMessage) -> str:
    body = message.get_body(("html",))
    assert body is not None
    return str(body.get_content())


def digests_to(memory: MemoryTransport, address: str) -> list[EmailMessage]:
    return [m for m in memory.messages if str(m["To"]) == address and "digest" in str(m["Subject"])]


def publish(runtime: Runtime, inline: InlineEnqueue, event: dict[str, Any]) -> None:
    ingest(runtime, event, inline, source="test")


def digest_rows(runtime: Runtime) -> list[tuple[int | None, str, datetime]]:
    with transaction(runtime.engine) as session:
        return [tuple(r) for r in session.execute(select(Digest.subscriber_id, Digest.status, Digest.window_at))]  # type: ignore[misc]


def test_subscribers_in_several_zones_get_one_digest_each_at_their_local_hour(
    runtime: Runtime, inline: InlineEnqueue, memory: MemoryTransport
) -> None:
    record = study(TRIAL)
    publish(runtime, inline, changed_event(record))  # baseline version
    zones = {
        "shanghai@example.org": "Asia/Shanghai",  # 08:00 = 00:00 UTC
        "newyork@example.org": "America/New_York",  # 08:00 = 13:00 UTC in December
        "kiritimati@example.org": "Pacific/Kiritimati",  # 08:00 = 18:00 UTC the day before
        "stjohns@example.org": "America/St_Johns",  # 08:00 = 11:30 UTC
    }
    for address, zone_name in zones.items():
        follow(runtime, address, trial=TRIAL, frequency="daily", preferences=DigestPreferences.parse(zone_name, 8))
    follow(runtime, "now@example.org", trial=TRIAL)  # immediate: gets the email at once, never a digest
    publish(runtime, inline, changed_event(open_recruitment(record), occurred_at="2026-12-01T09:00:00Z"))
    assert per_recipient(memory) == {"now@example.org": 1}, "digest subscribers get nothing at once"

    expected = {close_after(zone_name): address for address, zone_name in zones.items()}
    assert len(expected) == 4, "four different instants"
    # Every minute from now until the last close, with each tick duplicated (a second beat).
    clock = utcnow().replace(second=0, microsecond=0) + timedelta(minutes=1)
    ticks = sorted({clock, *expected, *(t - timedelta(minutes=1) for t in expected)})
    ticks += [max(expected) + timedelta(hours=1)]
    for moment in ticks:
        before = per_recipient(memory)
        digest_tick(runtime, inline.send_digests, now=moment)
        digest_tick(runtime, inline.send_digests, now=moment)
        got = per_recipient(memory) - before
        if moment in expected:
            assert dict(got) == {expected[moment]: 1}, moment
        else:
            assert not got, (moment, got)
    for address in zones:
        [message] = digests_to(memory, address)
        assert message["Subject"] == "Your daily digest: 1 update to studies you follow"
        assert "Recruitment status: Completed → Recruiting" in text(message)
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert "/unsubscribe/digest/" in str(message["List-Unsubscribe"])
        assert "Stop following this study" in html(message)
    # The next day, nothing held: nothing sent.
    digest_tick(runtime, inline.send_digests, now=max(expected) + timedelta(days=1, hours=1))
    assert sum(per_recipient(memory).values()) == 5


def test_redelivered_send_task_sends_nothing_twice(
    runtime: Runtime, inline: InlineEnqueue, memory: MemoryTransport
) -> None:
    record = study(TRIAL)
    publish(runtime, inline, changed_event(record))
    follow(runtime, "pat@example.org", trial=TRIAL, frequency="daily")  # UTC, 08:00
    publish(runtime, inline, changed_event(open_recruitment(record), occurred_at="2026-12-01T09:00:00Z"))
    queued: list[tuple[int, int]] = []

    def enqueue(after_id: int, upto_id: int) -> None:
        queued.append((after_id, upto_id))
        inline.send_digests(after_id, upto_id)

    report = digest_tick(runtime, enqueue, now=close_after())
    assert report.digests == 1 and len(queued) == 1
    for after_id, upto_id in queued:  # the broker hands the same send task out again
        inline.send_digests(after_id, upto_id)
    assert per_recipient(memory) == {"pat@example.org": 1}
    assert [status for _, status, _ in digest_rows(runtime)] == [DigestStatus.SENT]


def test_a_window_missed_while_workers_were_down_is_sent_late_once(
    runtime: Runtime, inline: InlineEnqueue, memory: MemoryTransport
) -> None:
    record = study(TRIAL)
    publish(runtime, inline, changed_event(record))
    follow(runtime, "pat@example.org", trial=TRIAL, frequency="daily", preferences=DigestPreferences.parse("UTC", 8))
    publish(runtime, inline, changed_event(open_recruitment(record), occurred_at="2026-12-01T09:00:00Z"))
    # Nothing ran at the next two closes; the first tick comes seven hours after the third.
    first = close_after()
    late = first + timedelta(days=2, hours=7)
    report = digest_tick(runtime, inline.send_digests, now=late)
    assert report.digests == 1
    assert per_recipient(memory) == {"pat@example.org": 1}
    [(_, _, window)] = digest_rows(runtime)
    assert window == first + timedelta(days=2)
    with transaction(runtime.engine) as session:
        due = session.scalar(select(Subscriber.digest_due_at))
    assert due == first + timedelta(days=3)
    assert digest_tick(runtime, inline.send_digests, now=late + timedelta(minutes=1)).digests == 0


def test_new_trials_and_changes_are_grouped_most_important_first(
    runtime: Runtime, inline: InlineEnqueue, memory: MemoryTransport
) -> None:
    record, other = study(TRIAL), study(OTHER)
    publish(runtime, inline, changed_event(record))
    publish(runtime, inline, changed_event(other))
    follow(runtime, "pat@example.org", trial=TRIAL, frequency="daily")
    follow(runtime, "pat@example.org", trial=OTHER, frequency="daily")
    follow(runtime, "pat@example.org", condition="Herniated Disc", frequency="daily")
    # A small change (enrollment) to one study, a big one (recruiting again) to the other.
    small = copy.deepcopy(other)
    small["protocolSection"]["designModule"]["enrollmentInfo"]["count"] = 999
    publish(runtime, inline, changed_event(small, occurred_at="2026-12-01T09:00:00Z"))
    publish(runtime, inline, changed_event(open_recruitment(record), occurred_at="2026-12-01T09:00:00Z"))
    publish(runtime, inline, new_trial_event(study(TRIAL), "Herniated Disc", occurred_at="2026-12-01T10:00:00Z"))
    digest_tick(runtime, inline.send_digests, now=close_after())
    [message] = digests_to(memory, "pat@example.org")
    assert message["Subject"] == "Your daily digest: 2 updates to studies you follow and 1 new study"
    body = text(message)
    changes_at = body.index("CHANGES TO STUDIES YOU FOLLOW")
    recruiting_at = body.index("Recruitment status: Completed → Recruiting")
    enrollment_at = body.index("999")
    new_at = body.index("NEW STUDIES FOR HERNIATED DISC")
    assert changes_at < recruiting_at < enrollment_at < new_at
    assert body.count("Stop following this study") == 2
    assert "Stop following Herniated Disc" in body
    # Each stop link ends its own subscription: three different links.
    links = {line.split(": ", 1)[1] for line in body.splitlines() if line.strip().startswith("Stop following")}
    assert len(links) == 3


def test_net_change_on_the_real_pair_first_before_to_last_after(
    runtime: Runtime, inline: InlineEnqueue, memory: MemoryTransport
) -> None:
    """Two changes inside one window are one entry: the first "before", the last "after"."""
    older, newer = pair()
    nct = older["protocolSection"]["identificationModule"]["nctId"]
    publish(runtime, inline, changed_event(older, occurred_at="2026-12-01T00:00:00Z"))
    follow(runtime, "pat@example.org", trial=nct, frequency="daily")
    recruiting = with_status(older, "RECRUITING")
    # The real later version, recruiting and with another enrollment figure: status and enrollment change.
    later = with_enrollment(with_status(newer, "RECRUITING"), 400)
    publish(runtime, inline, changed_event(recruiting, previous=older, occurred_at="2026-12-01T09:00:00Z"))
    publish(runtime, inline, changed_event(later, previous=recruiting, occurred_at="2026-12-01T10:00:00Z"))
    digest_tick(runtime, inline.send_digests, now=close_after())
    [message] = digests_to(memory, "pat@example.org")
    body = text(message)
    assert message["Subject"] == "Your daily digest: 1 update to studies you follow"
    assert body.count(f"({nct})") == 1, "one entry for the trial"
    assert "Recruitment status: Completed → Recruiting" in body
    assert "317" in body and "400" in body  # enrollment from the first version to the last


def test_net_change_of_nothing_material_sends_nothing(
    runtime: Runtime, inline: InlineEnqueue, memory: MemoryTransport
) -> None:
    """Recruiting, then back to the real later version (noise only against the first): no entry, no email."""
    older, newer = pair()
    nct = older["protocolSection"]["identificationModule"]["nctId"]
    publish(runtime, inline, changed_event(older, occurred_at="2026-12-01T00:00:00Z"))
    follow(runtime, "pat@example.org", trial=nct, frequency="daily")
    recruiting = with_status(older, "RECRUITING")
    publish(runtime, inline, changed_event(recruiting, previous=older, occurred_at="2026-12-01T09:00:00Z"))
    publish(runtime, inline, changed_event(newer, previous=recruiting, occurred_at="2026-12-01T10:00:00Z"))
    with transaction(runtime.engine) as session:
        assert session.scalar(select(func.count()).select_from(HeldItem)) == 2
    digest_tick(runtime, inline.send_digests, now=close_after())
    assert digests_to(memory, "pat@example.org") == []
    assert [status for _, status, _ in digest_rows(runtime)] == [DigestStatus.EMPTY]


def test_weekly_digest_waits_for_the_weekday(runtime: Runtime, inline: InlineEnqueue, memory: MemoryTransport) -> None:
    record = study(TRIAL)
    publish(runtime, inline, changed_event(record))
    # Weekly, Fridays at 18:00 in New York.
    preferences = DigestPreferences.parse("America/New_York", 18, "Friday")
    follow(runtime, "pat@example.org", trial=TRIAL, frequency="weekly", preferences=preferences)
    publish(runtime, inline, changed_event(open_recruitment(record), occurred_at="2026-12-01T09:00:00Z"))  # Tuesday
    friday = close_after("America/New_York", 18, 4, WEEKLY)
    assert friday.astimezone(ZoneInfo("America/New_York")).weekday() == 4
    for days in (3, 2, 1):  # the same hour on the days before: nothing
        if friday - timedelta(days=days) > utcnow():
            digest_tick(runtime, inline.send_digests, now=friday - timedelta(days=days))
    assert per_recipient(memory) == {}
    digest_tick(runtime, inline.send_digests, now=friday)
    [message] = digests_to(memory, "pat@example.org")
    assert message["Subject"].startswith("Your weekly digest")


def test_daily_subscriber_gets_weekly_items_on_the_weekday_only(
    runtime: Runtime, inline: InlineEnqueue, memory: MemoryTransport
) -> None:
    record, other = study(TRIAL), study(OTHER)
    publish(runtime, inline, changed_event(record))
    publish(runtime, inline, changed_event(other))
    follow(runtime, "pat@example.org", trial=TRIAL, frequency="daily")  # UTC 08:00, weekly on Mondays
    follow(runtime, "pat@example.org", trial=OTHER, frequency="weekly")
    publish(runtime, inline, changed_event(open_recruitment(record), occurred_at="2026-12-01T09:00:00Z"))
    publish(runtime, inline, changed_event(open_recruitment(other), occurred_at="2026-12-01T09:00:00Z"))
    first = close_after()
    if first.weekday() == 0:
        first += timedelta(days=1)  # a day that is not the weekly one (Monday)
    digest_tick(runtime, inline.send_digests, now=first)
    [message] = digests_to(memory, "pat@example.org")
    assert TRIAL in text(message) and OTHER not in text(message)
    monday = next_close(first, ZoneInfo("UTC"), 8, 0, WEEKLY)
    digest_tick(runtime, inline.send_digests, now=monday)
    second = digests_to(memory, "pat@example.org")[-1]
    assert OTHER in text(second) and TRIAL not in text(second)


def test_unsubscribe_erasure_and_suppression_drop_held_items(
    runtime: Runtime, inline: InlineEnqueue, memory: MemoryTransport
) -> None:
    record = study(TRIAL)
    publish(runtime, inline, changed_event(record))
    ids = {
        address: follow(runtime, address, trial=TRIAL, frequency="daily")
        for address in ("gone@example.org", "erased@example.org", "bounced@example.org", "kept@example.org")
    }
    publish(runtime, inline, changed_event(open_recruitment(record), occurred_at="2026-12-01T09:00:00Z"))
    with transaction(runtime.engine) as session:
        assert session.scalar(select(func.count()).select_from(HeldItem)) == 4
        subscriptions.unsubscribe(session, ids["gone@example.org"])
        erased = session.scalar(select(Subscriber.id).where(Subscriber.email == "erased@example.org"))
        assert erased is not None
        subscriptions.erase(session, erased)
        suppressions.suppress(session, runtime.hasher, "bounced@example.org", "bounce")
        assert session.scalar(select(func.count()).select_from(HeldItem)) == 1
    digest_tick(runtime, inline.send_digests, now=close_after())
    assert per_recipient(memory) == {"kept@example.org": 1}


def test_changing_frequency_and_time_moves_the_next_window(runtime: Runtime, inline: InlineEnqueue) -> None:
    subscription_id = follow(runtime, "pat@example.org", trial=TRIAL)
    with transaction(runtime.engine) as session:
        subscriber = session.scalar(select(Subscriber))
        assert subscriber is not None and subscriber.digest_due_at is None and subscriber.digest_cadence is None
        set_frequency(session, subscription_id, "weekly")
        set_preferences(session, subscriber.id, DigestPreferences.parse("Asia/Shanghai", "07:00", "Wednesday"))
        due = subscriber.digest_due_at
        assert subscriber.digest_cadence == "weekly" and due is not None
        local = due.astimezone(__import__("zoneinfo").ZoneInfo("Asia/Shanghai"))
        assert (local.weekday(), local.hour) == (2, 7)
        set_frequency(session, subscription_id, "immediately")
        assert subscriber.digest_cadence is None


def test_digest_links_carry_no_address(runtime: Runtime, inline: InlineEnqueue, memory: MemoryTransport) -> None:
    record = study(TRIAL)
    publish(runtime, inline, changed_event(record))
    follow(runtime, "pat.private@example.org", condition="Herniated Disc", frequency="daily")
    publish(runtime, inline, new_trial_event(record, "Herniated Disc", occurred_at="2026-12-01T10:00:00Z"))
    digest_tick(runtime, inline.send_digests, now=close_after())
    [message] = digests_to(memory, "pat.private@example.org")
    urls = [w for w in text(message).split() if w.startswith("http")]
    assert urls and not [u for u in urls if "pat" in u or "herniated" in u.lower()]
    # The subject shows on lock screens: no condition in it.
    assert "Herniated" not in str(message["Subject"])


def test_path_fixture_present() -> None:
    assert Path(PAIR / "version-2023-12-12.json").exists()


def test_a_digest_whose_worker_died_is_sent_once_by_maintenance(
    runtime: Runtime, inline: InlineEnqueue, memory: MemoryTransport
) -> None:
    """The worker claimed the digests and died before sending: the lease runs out, maintenance re-queues."""
    from alerts import maintenance
    from alerts.digests import schedule

    record = study(TRIAL)
    publish(runtime, inline, changed_event(record))
    follow(runtime, "pat@example.org", trial=TRIAL, frequency="daily")
    publish(runtime, inline, changed_event(open_recruitment(record), occurred_at="2026-12-01T09:00:00Z"))
    lost: list[tuple[int, int]] = []
    report = digest_tick(runtime, lambda a, u: lost.append((a, u)), now=close_after())  # the task is lost
    assert report.digests == 1 and lost
    with transaction(runtime.engine) as session:  # a worker claimed it, then was killed
        expired = utcnow() - timedelta(seconds=1)
        session.execute(Digest.__table__.update().values(status="sending", attempts=1, lease_until=expired))
    requeued: list[tuple[int, int]] = []
    maintenance.run(
        runtime.engine,
        inline.send_batch,
        batch_size=1000,
        stale_after_s=900,
        pending_days=14,
        retention_days=180,
        enqueue_digests=lambda a, u: requeued.append((a, u)),
    )
    assert requeued
    for after_id, upto_id in requeued + lost:  # the lost task turns up too: still one email
        inline.send_digests(after_id, upto_id)
    assert per_recipient(memory) == {"pat@example.org": 1}
    with transaction(runtime.engine) as session:
        assert schedule.requeue(session, 900, 1000) == []
        assert session.scalar(select(Digest.attempts)) == 2


def readers_holding_a_change(runtime: Runtime, inline: InlineEnqueue, n: int) -> list[str]:
    """``n`` daily followers of TRIAL (UTC, 08:00), each holding one material change; their addresses."""
    record = study(TRIAL)
    publish(runtime, inline, changed_event(record))
    addresses = [f"reader{i}@example.org" for i in range(n)]
    for address in addresses:
        follow(runtime, address, trial=TRIAL, frequency="daily")
    publish(runtime, inline, changed_event(open_recruitment(record), occurred_at="2026-12-01T09:00:00Z"))
    return addresses


def test_outcomes_with_a_message_id_each_are_recorded_for_every_digest(
    runtime: Runtime, inline: InlineEnqueue, memory: MemoryTransport
) -> None:
    """The memory transport answers one message id per recipient (like the file and SMTP transports)."""
    addresses = readers_holding_a_change(runtime, inline, 8)
    digest_tick(runtime, inline.send_digests, now=close_after())
    assert per_recipient(memory) == dict.fromkeys(addresses, 1)
    with transaction(runtime.engine) as session:
        rows = session.execute(select(Digest.status, Digest.provider_message_id, Digest.sent_at)).all()
    assert len(rows) == 8
    assert all(status == DigestStatus.SENT and message_id and sent_at for status, message_id, sent_at in rows)
    assert len({message_id for _, message_id, _ in rows}) == 8


def test_a_tick_closes_windows_chunk_by_chunk_and_queues_each_chunk_at_once(
    runtime: Runtime, inline: InlineEnqueue, memory: MemoryTransport
) -> None:
    """Five due subscribers, two per transaction: three chunks, each queued as soon as it commits."""
    from alerts.digests import schedule

    addresses = readers_holding_a_change(runtime, inline, 5)
    queued: list[tuple[int, int]] = []
    sent_when_queued: list[int] = []

    def enqueue(after_id: int, upto_id: int) -> None:
        queued.append((after_id, upto_id))
        sent_when_queued.append(sum(per_recipient(memory).values()))
        inline.send_digests(after_id, upto_id)

    report = schedule.tick(runtime.engine, 1000, close_after(), enqueue=enqueue, chunk=2)
    assert (report.chunks, report.due, report.digests, report.ranges) == (3, 5, 5, [])
    assert len(queued) == 3 and sent_when_queued == [0, 2, 4], "each chunk was sent before the next was closed"
    assert per_recipient(memory) == dict.fromkeys(addresses, 1)
    again = schedule.tick(runtime.engine, 1000, close_after(), enqueue=enqueue, chunk=2)
    assert (again.chunks, again.digests) == (1, 0)
    assert per_recipient(memory) == dict.fromkeys(addresses, 1)


def test_a_second_tick_while_one_runs_leaves_the_windows_to_it(
    runtime: Runtime, inline: InlineEnqueue, memory: MemoryTransport
) -> None:
    """PostgreSQL: a duplicated tick does not wait for the running one's chunks (it closes everything due)."""
    import pytest
    from sqlalchemy import text

    from alerts.digests import schedule

    if runtime.engine.dialect.name != "postgresql":
        pytest.skip("SQLite serializes writers: a second tick waits, then finds nothing due")
    record = study(TRIAL)
    publish(runtime, inline, changed_event(record))
    follow(runtime, "pat@example.org", trial=TRIAL, frequency="daily")
    publish(runtime, inline, changed_event(open_recruitment(record), occurred_at="2026-12-01T09:00:00Z"))
    lock = "SELECT pg_{}(hashtext(current_schema()), :key)"
    with runtime.engine.connect() as running:  # the running tick
        assert running.scalar(text(lock.format("try_advisory_lock")), {"key": schedule.TICK_LOCK})
        skipped = digest_tick(runtime, inline.send_digests, now=close_after())
        assert skipped.skipped and skipped.digests == 0 and per_recipient(memory) == {}
        running.execute(text(lock.format("advisory_unlock")), {"key": schedule.TICK_LOCK})
    assert digest_tick(runtime, inline.send_digests, now=close_after()).digests == 1
    assert per_recipient(memory) == {"pat@example.org": 1}


def test_identical_digests_share_a_rendering_from_share_min_on_and_fewer_are_packed(
    runtime: Runtime, inline: InlineEnqueue, memory: MemoryTransport
) -> None:
    """SHARE_MIN readers with the same digest get one batch whose content is that digest (links per
    recipient); a few more holding something else as well are packed, each with its own parts."""
    from alerts.digests.send import SHARE_MIN

    addresses = readers_holding_a_change(runtime, inline, SHARE_MIN + 2)
    publish(runtime, inline, changed_event(study(OTHER)))
    for address in addresses[:2]:
        follow(runtime, address, trial=OTHER, frequency="daily")
    publish(runtime, inline, changed_event(open_recruitment(study(OTHER)), occurred_at="2026-12-01T10:00:00Z"))
    digest_tick(runtime, inline.send_digests, now=close_after())
    assert per_recipient(memory) == dict.fromkeys(addresses, 1)
    by_size = sorted(memory.batches, key=lambda b: len(b.recipients))
    assert [len(b.recipients) for b in by_size] == [2, SHARE_MIN]
    packed, shared = by_size
    assert all(r.parts for r in packed.recipients), "two identical digests: packed, their entries as parts"
    assert not any(r.parts for r in shared.recipients), "SHARE_MIN identical digests: one shared rendering"
    assert "%%part_html%%" not in shared.content.html
