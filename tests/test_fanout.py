"""Large fan-outs chunk by chunk (alerts.fanout): the same deliveries as one INSERT, resumable, never twice."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from sqlalchemy import select

from alerts import fanout, maintenance
from alerts.db import transaction
from alerts.events import parse_event
from alerts.intake import accept
from alerts.models import Delivery, Event, EventStatus
from alerts.pipeline import Rejected, fan_out, ingest
from alerts.recovery import CannotReplay, replay
from alerts.runtime import Runtime
from alerts.transports.memory import MemoryTransport
from tests.conftest import InlineEnqueue, study
from tests.factories import follow, new_trial_event, per_recipient


@pytest.fixture
def chunked(runtime: Runtime) -> Runtime:
    """Tiny chunks, so a handful of followers takes several: first 2 subscribers, then 3 at a time."""
    runtime.settings = runtime.settings.model_copy(
        update={"fanout_first_chunk": 2, "fanout_chunk_size": 3, "batch_size": 2}
    )
    return runtime


def followers(runtime: Runtime, prefix: str, condition: str, count: int) -> None:
    for n in range(count):
        follow(runtime, f"{prefix}{n}@example.org", condition=condition)


def event_row(runtime: Runtime, event_id: int) -> Event:
    with transaction(runtime.engine) as session:
        row = session.get(Event, event_id)
        assert row is not None
        return row


def deliveries_per_subscriber(runtime: Runtime) -> Counter[int | None]:
    with transaction(runtime.engine) as session:
        return Counter(session.scalars(select(Delivery.subscriber_id)))


def accept_only(runtime: Runtime, condition: str = "Herniated Disc") -> int:
    """The event's own transaction and nothing after it: a worker that died right after accepting."""
    event = parse_event(new_trial_event(study("NCT00124774"), condition))
    with transaction(runtime.engine) as session:
        outcome = accept(session, event, runtime.renderer, runtime.site, runtime.settings.fanout_first_chunk)
    return outcome.event_id


def test_chunked_fan_out_reaches_everyone_once(
    chunked: Runtime, inline: InlineEnqueue, memory: MemoryTransport
) -> None:
    followers(chunked, "p", "Herniated Disc", 10)
    # Two matching subscriptions: still one delivery, owned by the older one.
    follow(chunked, "both@example.org", condition="Sciatica")
    follow(chunked, "both@example.org", condition="Herniated Disc")
    outcome = ingest(chunked, new_trial_event(study("NCT00124774"), "Sciatica"), inline, "t")
    assert not isinstance(outcome, Rejected)
    assert outcome.status == EventStatus.FANNED_OUT and outcome.recipients == 11
    expected = {f"p{n}@example.org": 1 for n in range(10)} | {"both@example.org": 1}
    assert per_recipient(memory) == Counter(expected)
    assert set(deliveries_per_subscriber(chunked).values()) == {1}
    row = event_row(chunked, outcome.event_id)
    assert (row.status, row.recipients, row.fanout_cursor, row.fanout_at) == ("fanned_out", 11, None, None)
    # Batches never straddle chunks: 2 + 3 + 3 + 3 subscribers in batches of at most 2.
    assert [u - a for _, a, u in inline.batches] == [2, 2, 1, 2, 1, 2, 1]


def test_a_label_first_met_in_a_later_chunk_gets_its_own_rendering(
    chunked: Runtime, inline: InlineEnqueue, memory: MemoryTransport
) -> None:
    followers(chunked, "disc", "Herniated Disc", 2)
    followers(chunked, "sciatica", "Sciatica", 4)
    ingest(chunked, new_trial_event(study("NCT00124774"), "Sciatica"), inline, "t")
    texts = {str(m["To"]): m.get_body(("plain",)).get_content() for m in memory.messages}  # type: ignore[union-attr]
    assert len(texts) == 6
    assert all("You follow: Herniated Disc\n" in texts[f"disc{n}@example.org"] for n in range(2))
    assert all("You follow: Sciatica\n" in texts[f"sciatica{n}@example.org"] for n in range(4))


def test_small_audiences_are_applied_in_the_event_transaction(runtime: Runtime) -> None:
    followers(runtime, "p", "Herniated Disc", 3)
    event_id = accept_only(runtime)
    row = event_row(runtime, event_id)
    assert (row.status, row.recipients, row.fanout_cursor) == ("fanned_out", 3, None)


def test_a_fan_out_whose_worker_died_is_resumed_by_maintenance(
    chunked: Runtime, inline: InlineEnqueue, memory: MemoryTransport
) -> None:
    followers(chunked, "disc", "Herniated Disc", 2)
    followers(chunked, "sciatica", "Sciatica", 5)
    event_id = accept_only(chunked, "Sciatica")
    row = event_row(chunked, event_id)
    assert (row.status, row.recipients) == ("fanning_out", 2) and row.fanout_cursor is not None

    def run_maintenance(stale_s: int) -> maintenance.MaintenanceReport:
        return maintenance.run(
            chunked.engine,
            inline.send_batch,
            batch_size=2,
            stale_after_s=3600,
            pending_days=14,
            retention_days=180,
            enqueue_fan_out=inline.fan_out,
            fanout_stale_s=stale_s,
        )

    # Still advancing (its last chunk is recent): left alone.
    assert run_maintenance(3600).fan_outs_resumed == 0
    assert inline.fan_outs == []
    report = run_maintenance(0)
    assert report.fan_outs_resumed == 1 and inline.fan_outs == [event_id]
    row = event_row(chunked, event_id)
    assert (row.status, row.recipients, row.fanout_cursor) == ("fanned_out", 7, None)
    assert set(deliveries_per_subscriber(chunked).values()) == {1}
    # The resumed run has no event record to render "Sciatica" from: those recipients get the event's
    # main rendering, and every recipient gets exactly one email.
    assert per_recipient(memory) == Counter(
        {f"disc{n}@example.org": 1 for n in range(2)} | {f"sciatica{n}@example.org": 1 for n in range(5)}
    )
    # Done: another pass finds nothing to resume, and running the fan-out again creates nothing.
    assert run_maintenance(0).fan_outs_resumed == 0
    assert fan_out(chunked, event_id, inline).created == 0


def test_a_redelivered_event_carries_on_with_its_fan_out(
    chunked: Runtime, inline: InlineEnqueue, memory: MemoryTransport
) -> None:
    """The worker died after the event's transaction; the broker gives the message to another one."""
    followers(chunked, "p", "Herniated Disc", 7)
    payload = new_trial_event(study("NCT00124774"), "Herniated Disc", event_id="redelivered-1")
    event = parse_event(payload)
    with transaction(chunked.engine) as session:
        event_id = accept(session, event, chunked.renderer, chunked.site, 2).event_id
    assert event_row(chunked, event_id).status == "fanning_out"
    outcome = ingest(chunked, payload, inline, "t")
    assert not isinstance(outcome, Rejected) and outcome.status == "duplicate"
    row = event_row(chunked, event_id)
    assert (row.status, row.recipients) == ("fanned_out", 7)
    assert per_recipient(memory) == Counter({f"p{n}@example.org": 1 for n in range(7)})
    # Another copy later: nothing more to do.
    ingest(chunked, payload, inline, "t")
    assert sum(per_recipient(memory).values()) == 7


def test_a_fanning_out_event_cannot_be_replayed_yet(chunked: Runtime) -> None:
    followers(chunked, "p", "Herniated Disc", 4)
    event_id = accept_only(chunked)
    with transaction(chunked.engine) as session, pytest.raises(CannotReplay, match="still fanning out"):
        replay(session, event_id, 2, dry_run=True)


def test_two_runs_over_one_event_take_turns(chunked: Runtime, inline: InlineEnqueue) -> None:
    """A resumed fan-out racing the original one: the event's row lock serializes their chunks."""
    followers(chunked, "p", "Herniated Disc", 12)
    event_id = accept_only(chunked)
    queued: list[tuple[int, int, int]] = []
    lock = threading.Lock()

    def enqueue(event: int, after_id: int, upto_id: int) -> None:
        with lock:
            queued.append((event, after_id, upto_id))

    errors: list[BaseException] = []

    def one_run() -> None:
        try:
            fanout.run(chunked.engine, event_id, chunk_size=2, batch_size=2, enqueue_batch=enqueue)
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=one_run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert set(deliveries_per_subscriber(chunked).values()) == {1}
    assert sum(deliveries_per_subscriber(chunked).values()) == 12
    assert event_row(chunked, event_id).status == "fanned_out"
    # Every delivery after the first chunk is in exactly one queued range.
    with transaction(chunked.engine) as session:
        ids = sorted(session.scalars(select(Delivery.id).where(Delivery.event_id == event_id)))
    covered = sorted(i for _, a, u in queued for i in ids if a < i <= u)
    assert covered == ids[2:]


def test_stale_fan_outs_are_touched_when_queued(chunked: Runtime) -> None:
    followers(chunked, "p", "Herniated Disc", 4)
    event_id = accept_only(chunked)
    with transaction(chunked.engine) as session:
        assert fanout.stale_fan_outs(session, 0) == [event_id]
    # Queued once; a pass within the stale period leaves it to the queued run.
    with transaction(chunked.engine) as session:
        assert fanout.stale_fan_outs(session, 60) == []


def test_a_chunk_reports_exactly_the_rows_it_made(chunked: Runtime) -> None:
    # The INSERT tells what it made (count, id range, last subscriber, variants): the same as reading back.
    from alerts.contents import variant_counts
    from alerts.matching import MatchPlan, create_deliveries_chunk

    followers(chunked, "disc", "Herniated Disc", 4)
    followers(chunked, "sciatica", "Sciatica", 5)
    event_id = accept_only(chunked, "Sciatica")
    while True:
        with transaction(chunked.engine) as session:
            event = session.get(Event, event_id)
            assert event is not None and event.match is not None
            if event.status != EventStatus.FANNING_OUT:
                break
            chunk = create_deliveries_chunk(
                session, event_id, MatchPlan.from_json(event.match), event.fanout_cursor or 0, 3
            )
            rows = session.execute(
                select(Delivery.id, Delivery.subscriber_id).where(
                    Delivery.event_id == event_id, Delivery.id > chunk.after_id
                )
            ).all()
            assert chunk.created == len(rows) > 0
            assert (chunk.after_id, chunk.upto_id) == (min(r[0] for r in rows) - 1, max(r[0] for r in rows))
            assert sorted(chunk.variants, key=str) == sorted(variant_counts(session, event_id, chunk.after_id), key=str)
            event.recipients += chunk.created
            if chunk.complete:
                event.status = EventStatus.FANNED_OUT
            else:
                event.fanout_cursor = chunk.last_subscriber_id
    assert set(deliveries_per_subscriber(chunked).values()) == {1}
    assert sum(deliveries_per_subscriber(chunked).values()) == 9
