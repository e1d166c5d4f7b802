"""Operator recovery: list failed deliveries and put them back in the queue."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from alerts import contents
from alerts.matching import batch_ranges
from alerts.models import Delivery, DeliveryStatus, Event, utcnow


@dataclass(frozen=True)
class FailedDelivery:
    delivery_id: int
    event_id: int
    nct_id: str
    event_type: str
    attempts: int
    error_code: int | None
    error: str | None
    failed_at: datetime


def failed_deliveries(session: Session, since: datetime | None = None, limit: int = 100) -> list[FailedDelivery]:
    query = (
        select(Delivery, Event.nct_id, Event.type)
        .join(Event, Event.id == Delivery.event_id)
        .where(Delivery.status == DeliveryStatus.FAILED.value)
        .order_by(Delivery.updated_at.desc(), Delivery.id.desc())
        .limit(limit)
    )
    if since is not None:
        query = query.where(Delivery.updated_at >= since)
    return [
        FailedDelivery(d.id, d.event_id, nct_id, event_type, d.attempts, d.error_code, d.error, d.updated_at)
        for d, nct_id, event_type in session.execute(query)
    ]


@dataclass(frozen=True)
class FailureReason:
    error_code: int | None
    error: str | None
    count: int
    events: int
    first_failed_at: datetime
    last_failed_at: datetime


def failure_reasons(session: Session, since: datetime | None = None) -> list[FailureReason]:
    """Failed deliveries grouped by the provider's code and reason, most frequent first (one GROUP BY)."""
    query = (
        select(
            Delivery.error_code,
            Delivery.error,
            func.count(),
            func.count(func.distinct(Delivery.event_id)),
            func.min(Delivery.updated_at),
            func.max(Delivery.updated_at),
        )
        .where(Delivery.status == DeliveryStatus.FAILED.value)
        .group_by(Delivery.error_code, Delivery.error)
        .order_by(func.count().desc(), func.max(Delivery.updated_at).desc())
    )
    if since is not None:
        query = query.where(Delivery.updated_at >= since)
    return [
        FailureReason(code, error, int(n), int(events), first, last)
        for code, error, n, events, first, last in session.execute(query)
    ]


def requeue_failed(session: Session, batch_size: int, since: datetime | None = None) -> list[tuple[int, int, int]]:
    """Failed deliveries (optionally only those failed since ``since``) go back to queued.

    Returns the (event_id, after_id, upto_id) ranges to hand to send tasks once this commits. Only failed
    rows change, so re-sending a range never touches what was already sent.
    """
    condition = Delivery.status == DeliveryStatus.FAILED.value
    if since is not None:
        condition = condition & (Delivery.updated_at >= since)
    events = sorted({int(e) for e in session.scalars(select(Delivery.event_id).where(condition).distinct())})
    session.execute(
        update(Delivery)
        .where(condition)
        .values(status=DeliveryStatus.QUEUED.value, error=None, error_code=None, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return [(e, a, u) for e in events for a, u in batch_ranges(session, e, batch_size, DeliveryStatus.QUEUED)]


@dataclass(frozen=True)
class Replay:
    event_id: int
    new_recipients: int
    sample: list[tuple[int, int, str | None]]  # (subscriber id, subscription id, followed label)
    ranges: list[tuple[int, int, int]]  # batches to queue (empty for a dry run)


class CannotReplay(Exception):
    pass


def replay(session: Session, event_id: int, batch_size: int, dry_run: bool) -> Replay:
    """Match the event again against today's subscriptions; only those it has not reached are new.

    A dry run writes nothing. Otherwise the new deliveries are created (the same dedupe key, so nobody
    reached before gets a second email) and their batch ranges returned, to queue after commit.
    """
    from alerts.matching import MatchPlan, create_deliveries, would_receive

    event = session.get(Event, event_id)
    if event is None:
        raise CannotReplay(f"no event {event_id}")
    if event.status == "fanning_out":
        raise CannotReplay(f"event {event_id} is still fanning out (alerts.fanout); replay it once that is done")
    if event.match is None or event.status != "fanned_out":
        raise CannotReplay(f"event {event_id} was {event.status}: {event.reason or 'nothing was matched'}")
    if event.content is None:
        raise CannotReplay(f"event {event_id} is past retention: its email is no longer stored")
    plan = MatchPlan.from_json(event.match)
    count, sample = would_receive(session, event_id, plan)
    if dry_run or count == 0:
        return Replay(event_id, count, sample, [])
    existing = session.scalar(select(func.max(Delivery.id)).where(Delivery.event_id == event_id)) or 0
    create_deliveries(
        session,
        event_id,
        plan.kind,
        plan.targets,
        plan.dedupe_key,
        broader_targets=plan.broader_targets,
        facts=plan.facts,
        near=plan.near,
    )
    # A followed label that had no recipient at the time has no rendering of its own.
    contents.fall_back_to_main(session, event_id, existing)
    ranges = [(event_id, a, u) for a, u in batch_ranges(session, event_id, batch_size) if u > existing]
    return Replay(event_id, count, sample, ranges)
