"""Event -> subscriptions, in SQL. Deliveries are created set-based, never by looping over subscribers."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from sqlalchemy import Integer, String, func, literal, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from alerts.models import Delivery, DeliveryStatus, Subscription, SubscriptionKind, SubscriptionStatus, utcnow


def create_deliveries(
    session: Session, event_id: int, kind: SubscriptionKind, targets: Sequence[str], dedupe_key: str
) -> int:
    """One queued delivery per subscriber with an active subscription to any of ``targets``.

    ``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` on (dedupe_key, subscriber_id): a subscriber who
    follows several matching conditions, or who was already reached by another event carrying the same
    news, gets no second row. Returns the number of rows created.
    """
    if not targets:
        return 0
    now = utcnow()
    matches = (
        select(
            literal(event_id, Integer()).label("event_id"),
            Subscription.subscriber_id,
            # Several matching subscriptions: the oldest one owns the delivery (and its unsubscribe link).
            func.min(Subscription.id).label("subscription_id"),
            literal(dedupe_key, String()).label("dedupe_key"),
            literal(DeliveryStatus.QUEUED.value, String()).label("status"),
            literal(0, Integer()).label("attempts"),
            literal(now, Delivery.created_at.type).label("created_at"),
            literal(now, Delivery.updated_at.type).label("updated_at"),
        )
        .where(
            Subscription.kind == kind.value,
            Subscription.target.in_(list(targets)),
            Subscription.status == SubscriptionStatus.ACTIVE.value,
        )
        .group_by(Subscription.subscriber_id)
        # Keyset order: delivery ids follow subscriber ids, so batches read the index in order.
        .order_by(Subscription.subscriber_id)
    )
    columns = [
        "event_id",
        "subscriber_id",
        "subscription_id",
        "dedupe_key",
        "status",
        "attempts",
        "created_at",
        "updated_at",
    ]
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = (
        insert(Delivery)
        .from_select(columns, matches)
        .on_conflict_do_nothing(index_elements=["dedupe_key", "subscriber_id"])
    )
    session.execute(statement)
    # rowcount of INSERT ... SELECT is not reported by every driver; the (event_id, id) index counts fast.
    return int(session.scalar(select(func.count()).where(Delivery.event_id == event_id)) or 0)


def batch_ranges(session: Session, event_id: int, batch_size: int) -> Iterator[tuple[int, int]]:
    """(after_id, upto_id] ranges of at most ``batch_size`` deliveries of an event, in id order.

    One window-function query returns only every batch_size-th id, so memory is N/batch_size ids, and
    each send task claims its range through the (event_id, id) index.
    """
    numbered = (
        select(Delivery.id, func.row_number().over(order_by=Delivery.id).label("rn"))
        .where(Delivery.event_id == event_id)
        .subquery()
    )
    total = session.scalar(select(func.count()).select_from(numbered)) or 0
    if total == 0:
        return
    ends = (
        select(numbered.c.id)
        .where((numbered.c.rn % batch_size == 0) | (numbered.c.rn == total))
        .order_by(numbered.c.id)
    )
    after = 0
    for upto in session.scalars(ends):
        yield after, int(upto)
        after = int(upto)
