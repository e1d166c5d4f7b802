"""The rest of a large fan-out: delivery rows chunk by chunk, each chunk queued for sending once committed.

``intake.accept`` creates the first chunk of subscribers in the event's own transaction, so a small
audience is fully applied there, at once. When that chunk was full, the event is left ``fanning_out``
with a cursor (the last subscriber id reached) and ``run`` creates the rest, one transaction per chunk.
Sending starts as soon as the first chunk commits instead of after the last row exists: at 100,000
recipients that overlaps most of the insert with sending.

Each chunk holds the event's row lock and its trial's (events of one trial share dedupe keys, see
``matching.create_deliveries``), so two runs over one event (a resumed fan-out racing a slow one) take
turns and never create a row twice. A run that dies leaves the cursor at its last committed chunk; the
event's redelivered message carries on from there (``pipeline.ingest``), and maintenance
(``stale_fan_outs``) queues ``alerts.events.fan_out`` for events that stopped advancing anyway.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from alerts import contents
from alerts.db import transaction
from alerts.matching import MatchPlan, batch_ranges, create_deliveries_chunk
from alerts.models import DeliveryStatus, Event, EventStatus, Trial, utcnow
from alerts.rendering import Content


@dataclass
class FanOut:
    created: int = 0  # deliveries this run created
    batches: int = 0  # send tasks queued
    recipients: int = 0  # the event's total when the run ended
    status: str = ""  # the event's status when the run ended


def _lock(session: Session, event_id: int) -> Event | None:
    # A write first: it takes PostgreSQL's row lock, and on SQLite (where the driver begins a transaction
    # only at the first write) the database's write lock, so the reads below see every chunk another run
    # committed before this one got the lock.
    session.execute(
        update(Event)
        .where(Event.id == event_id)
        .values(fanout_at=Event.fanout_at)
        .execution_options(synchronize_session=False)
    )
    event = session.get(Event, event_id)
    if event is not None:
        session.execute(select(Trial.nct_id).where(Trial.nct_id == event.nct_id).with_for_update())
    return event


def run(
    engine: Engine,
    event_id: int,
    *,
    chunk_size: int,
    batch_size: int,
    enqueue_batch: Callable[[int, int, int], None],
    render: Callable[[str | None], Content] | None = None,
    resume: bool = False,
) -> FanOut:
    """Create the event's remaining deliveries and queue their sending, chunk after chunk, until done.

    ``render(variant)`` renders a followed label met for the first time in a later chunk. Without it (a
    fan-out resumed by maintenance, which no longer has the event's record), such recipients get the
    event's main rendering (``contents.fall_back_to_main``). A ``resume`` also queues what is still queued
    of the chunks before it: the run that died may have died before queueing them (a second task for
    rows already queued is harmless: claims are atomic).
    """
    report = FanOut()
    if resume:
        with transaction(engine) as session:
            earlier = list(batch_ranges(session, event_id, batch_size, status=DeliveryStatus.QUEUED))
        for after_id, upto_id in earlier:
            enqueue_batch(event_id, after_id, upto_id)
        report.batches += len(earlier)
    while True:
        with transaction(engine) as session:
            event = _lock(session, event_id)
            if event is None:
                return report
            report.recipients, report.status = event.recipients, event.status
            if event.status != EventStatus.FANNING_OUT or event.match is None:
                return report  # done (by this run's last chunk, or by another run)
            plan = MatchPlan.from_json(event.match)
            chunk = create_deliveries_chunk(session, event.id, plan, event.fanout_cursor or 0, chunk_size)
            event.recipients += chunk.created
            if chunk.created:
                if render is not None:
                    contents.render_variants(session, event, render, after_id=chunk.after_id, counts=chunk.variants)
                else:
                    contents.fall_back_to_main(session, event.id, chunk.after_id)
            if chunk.complete:
                event.status, event.fanout_cursor, event.fanout_at = EventStatus.FANNED_OUT, None, None
            else:
                event.fanout_cursor, event.fanout_at = chunk.last_subscriber_id, utcnow()
            ranges = list(batch_ranges(session, event.id, batch_size, after_id=chunk.after_id)) if chunk.created else []
            report.recipients, report.status = event.recipients, event.status
        # Queued only after the chunk committed: a send task must find its rows.
        for after_id, upto_id in ranges:
            enqueue_batch(event_id, after_id, upto_id)
        report.created += chunk.created
        report.batches += len(ranges)


def stale_fan_outs(session: Session, stale_after_s: int) -> list[int]:
    """Events still fanning out whose last chunk is older than ``stale_after_s``: their run died.

    Touched here so the next maintenance pass does not queue them again while the resumed run is queued.
    """
    now = utcnow()
    stale = [
        int(i)
        for i in session.scalars(
            select(Event.id).where(
                Event.status == EventStatus.FANNING_OUT.value,
                Event.fanout_at < now - timedelta(seconds=stale_after_s),
            )
        )
    ]
    if stale:
        session.execute(
            update(Event).where(Event.id.in_(stale)).values(fanout_at=now).execution_options(synchronize_session=False)
        )
    return stale
