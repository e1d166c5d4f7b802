"""The periodic maintenance pass: recover stuck work, expire unconfirmed sign-ups, prune old history.

A lost broker message (Redis restarted without persistence, a worker killed between claim and send) must
never lose an email: deliveries stuck in ``sending`` past their lease go back to ``queued``, queued
deliveries nobody touched for a while are handed to send tasks again, and a fan-out that stopped
advancing (its worker died between chunks) is resumed. Claims are atomic
(queued -> sending), so re-queueing work that is in fact still on the broker costs a no-op task, never a
second email.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta

from sqlalchemy import Engine, delete, exists, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from alerts import counters, fanout, signups
from alerts.db import transaction
from alerts.digests import schedule
from alerts.matching import batch_ranges
from alerts.models import (
    Delivery,
    DeliveryCount,
    DeliveryStatus,
    Digest,
    DigestFragment,
    DigestStatus,
    Event,
    EventContent,
    HeldItem,
    RejectedEvent,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    TrialVersion,
    WebhookEvent,
    utcnow,
)


@dataclass
class MaintenanceReport:
    leases_expired: int = 0
    batches_requeued: int = 0
    fan_outs_resumed: int = 0
    pending_expired: int = 0
    deliveries_pruned: int = 0
    counter_rows_folded: int = 0
    signups_requeued: int = 0
    digest_batches_requeued: int = 0


def _rowcount(result: object) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


def release_expired_leases(session: Session) -> tuple[int, set[int]]:
    """Deliveries claimed by a worker that never finished go back to queued; returns (rows, event ids)."""
    now = utcnow()
    result = session.execute(
        update(Delivery)
        .where(Delivery.status == DeliveryStatus.SENDING.value, Delivery.lease_until < now)
        # The worker may have handed the batch to the provider before it died: a re-send is ambiguous,
        # counted like a timeout retry so operators see it (alerts_ambiguous_retries_total).
        .values(
            status=DeliveryStatus.QUEUED.value,
            lease_until=None,
            updated_at=now,
            ambiguous_retries=Delivery.ambiguous_retries + 1,
        )
        .returning(Delivery.event_id)
        .execution_options(synchronize_session=False)
    )
    events = [int(e) for e in result.scalars()]
    counters.add(session, {(counters.AMBIGUOUS_RESENDS, "lease_expired"): len(events)}, now)
    return len(events), set(events)


def stale_events(session: Session, stale_after_s: int) -> list[int]:
    """Events with queued deliveries that nobody has touched for ``stale_after_s``."""
    cutoff = utcnow() - timedelta(seconds=stale_after_s)
    query = (
        select(Delivery.event_id)
        .where(Delivery.status == DeliveryStatus.QUEUED.value, Delivery.updated_at < cutoff)
        .group_by(Delivery.event_id)
    )
    return [int(e) for e in session.scalars(query)]


def requeue_ranges(session: Session, event_id: int, batch_size: int) -> list[tuple[int, int]]:
    # Touch the rows so the next pass does not queue them again while these tasks are on the broker.
    session.execute(
        update(Delivery)
        .where(Delivery.event_id == event_id, Delivery.status == DeliveryStatus.QUEUED.value)
        .values(updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return list(batch_ranges(session, event_id, batch_size, status=DeliveryStatus.QUEUED))


def expire_pending(session: Session, days: int) -> int:
    """Unconfirmed sign-ups older than ``days`` are deleted, and people left with nothing are erased."""
    cutoff = utcnow() - timedelta(days=days)
    expired = (Subscription.status == SubscriptionStatus.PENDING.value) & (Subscription.created_at < cutoff)
    # deliveries has no foreign keys (see models.Delivery): clear references to what goes.
    session.execute(
        update(Delivery)
        .where(Delivery.subscription_id.in_(select(Subscription.id).where(expired).scalar_subquery()))
        .values(subscription_id=None)
        .execution_options(synchronize_session=False)
    )
    result = session.execute(
        delete(Subscription)
        .where(Subscription.status == SubscriptionStatus.PENDING.value, Subscription.created_at < cutoff)
        .execution_options(synchronize_session=False)
    )
    orphan = ~exists().where(Subscription.subscriber_id == Subscriber.id)
    still_referenced = exists().where(Delivery.subscriber_id == Subscriber.id)
    session.execute(delete(Subscriber).where(orphan, ~still_referenced).execution_options(synchronize_session=False))
    return _rowcount(result)


def prune_history(session: Session, retention_days: int) -> int:
    """Deliveries older than the retention period become daily counts by status, then go."""
    cutoff = utcnow() - timedelta(days=retention_days)
    finished = [DeliveryStatus.SENT, DeliveryStatus.FAILED, DeliveryStatus.SUPPRESSED, DeliveryStatus.SKIPPED]
    old = (Delivery.created_at < cutoff) & Delivery.status.in_([s.value for s in finished])
    day = func.date(Delivery.created_at)
    totals = (
        select(day.label("day"), Delivery.status, func.count().label("n")).where(old).group_by(day, Delivery.status)
    )
    rows = [(r.day, r.status, int(r.n)) for r in session.execute(totals)]
    if not rows:
        return 0
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    for day_value, status, count in rows:
        day_date = date.fromisoformat(day_value) if isinstance(day_value, str) else day_value
        statement = insert(DeliveryCount).values(day=day_date, status=status, count=count)
        session.execute(
            statement.on_conflict_do_update(
                index_elements=["day", "status"], set_={"count": DeliveryCount.count + statement.excluded.count}
            )
        )
    result = session.execute(delete(Delivery).where(old).execution_options(synchronize_session=False))
    # The shared renderings of old events are not needed once their deliveries are gone.
    session.execute(
        update(Event)
        .where(Event.received_at < cutoff, Event.content.is_not(None))
        .values(content=None)
        .execution_options(synchronize_session=False)
    )
    old_events = select(Event.id).where(Event.received_at < cutoff)
    session.execute(
        delete(EventContent)
        .where(EventContent.event_id.in_(old_events.scalar_subquery()))
        .execution_options(synchronize_session=False)
    )
    session.execute(delete(RejectedEvent).where(RejectedEvent.received_at < cutoff))
    # Digest history: items carried by old digests (what their one-click link ends), the digests, and the
    # records and fragments no window can need any more.
    # Digests carry held items by watermark; items that old are long carried (windows are a week at most).
    session.execute(delete(HeldItem).where(HeldItem.created_at < cutoff).execution_options(synchronize_session=False))
    session.execute(
        delete(Digest)
        .where(Digest.created_at < cutoff, Digest.status != DigestStatus.QUEUED.value)
        .execution_options(synchronize_session=False)
    )
    session.execute(delete(TrialVersion).where(TrialVersion.created_at < cutoff))
    session.execute(delete(DigestFragment).where(DigestFragment.created_at < cutoff))
    # Provider events are only kept to deduplicate SendGrid's retries, which stop after days.
    session.execute(delete(WebhookEvent).where(WebhookEvent.received_at < cutoff))
    return _rowcount(result)


def run(
    engine: Engine,
    enqueue_batch: Callable[[int, int, int], None],
    batch_size: int,
    stale_after_s: int,
    pending_days: int,
    retention_days: int,
    enqueue_fan_out: Callable[[int], None] | None = None,
    fanout_stale_s: int = 120,
    enqueue_signup: Callable[[int], None] | None = None,
    enqueue_digests: Callable[[int, int], None] | None = None,
) -> MaintenanceReport:
    report = MaintenanceReport()
    if enqueue_signup is not None:
        # A sign-up whose message was lost (broker restarted without persistence) is decided after all.
        with transaction(engine) as session:
            waiting = signups.stale(session)
        for request_id in waiting:
            enqueue_signup(request_id)
        report.signups_requeued = len(waiting)
    if enqueue_fan_out is not None:
        with transaction(engine) as session:
            resumed = fanout.stale_fan_outs(session, fanout_stale_s)
        for event_id in resumed:
            enqueue_fan_out(event_id)
        report.fan_outs_resumed = len(resumed)
    with transaction(engine) as session:
        report.leases_expired, events = release_expired_leases(session)
    with transaction(engine) as session:
        events |= set(stale_events(session, stale_after_s))
        ranges = [(e, a, u) for e in sorted(events) for a, u in requeue_ranges(session, e, batch_size)]
    # Queued only after the transaction that touched the rows committed.
    for event_id, after_id, upto_id in ranges:
        enqueue_batch(event_id, after_id, upto_id)
    report.batches_requeued = len(ranges)
    if enqueue_digests is not None:
        # Digests whose send lease ran out (worker died) or whose send task was lost.
        with transaction(engine) as session:
            digest_ranges = schedule.requeue(session, stale_after_s, batch_size)
        for after_id, upto_id in digest_ranges:
            enqueue_digests(after_id, upto_id)
        report.digest_batches_requeued = len(digest_ranges)
    with transaction(engine) as session:
        report.pending_expired = expire_pending(session, pending_days)
        signups.expire(session, pending_days)
    with transaction(engine) as session:
        report.deliveries_pruned = prune_history(session, retention_days)
    with transaction(engine) as session:
        report.counter_rows_folded = counters.fold(session)
    return report
