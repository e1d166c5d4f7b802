"""Operator recovery: list failed deliveries and put them back in the queue."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

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
    return [(e, a, u) for e in events for a, u in batch_ranges(session, e, batch_size)]
