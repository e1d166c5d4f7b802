"""SendGrid Event Webhook events applied to deliveries, addresses and subscriptions.

The HTTP endpoint (``alerts.web.webhooks``) only verifies the signature and queues the events; the Celery
task ``alerts.webhooks.process_sendgrid`` calls ``apply_events``. SendGrid retries and duplicates events, so
each ``sg_event_id`` is applied once: the ids are inserted first (``ON CONFLICT DO NOTHING``) and only the
ones that were new are applied, in the same transaction.

What each event does:

- ``bounce`` (type "bounce", a hard bounce): delivery failed, address suppressed.
- ``bounce`` (type "blocked"): delivery failed (the receiving server refused it for now; address kept).
- ``dropped``: delivery failed; address suppressed when SendGrid dropped it for a bounced, invalid,
  unsubscribed or spam-reporting address.
- ``spamreport``: address suppressed (no further email of any kind).
- ``unsubscribe`` / ``group_unsubscribe``: that subscription ends (every subscription of the address when
  the event names no delivery of ours).
- ``delivered`` / ``deferred``: the delivery's note is cleared / says the receiver deferred it.

Deliveries are found by our ``delivery_id`` (sent in ``custom_args``, echoed as a top-level field), else by
``sg_message_id`` (its prefix is the ``X-Message-Id`` stored on the delivery) and the address's hash.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from alerts.addresses import AddressHasher
from alerts.db import transaction
from alerts.logs import redact
from alerts.models import (
    Delivery,
    DeliveryStatus,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    WebhookEvent,
    utcnow,
)
from alerts.suppressions import NewSuppression, address_hash, insert_ignoring_conflicts, suppress_many

log = structlog.get_logger("alerts.webhooks")

PROVIDER = "sendgrid"
HANDLED = frozenset({"delivered", "deferred", "bounce", "dropped", "spamreport", "unsubscribe", "group_unsubscribe"})
# The fields we keep from an event (what is queued and applied); everything else SendGrid sends is dropped.
FIELDS = (
    "sg_event_id",
    "event",
    "email",
    "timestamp",
    "sg_message_id",
    "delivery_id",
    "type",
    "reason",
    "status",
    "response",
    "bounce_classification",
)
# ``dropped`` reasons that mean the address itself must not be emailed again.
SUPPRESSING_DROPS = ("bounced address", "invalid", "unsubscribed address", "spam reporting address")
_CHUNK = 500


@dataclass
class WebhookReport:
    received: int = 0
    duplicates: int = 0
    applied: int = 0
    ignored: int = 0
    unmatched: int = 0  # applied to the address, but no delivery of ours was found
    suppressed: int = 0
    unsubscribed: int = 0
    failed_deliveries: int = 0


def slim(events: Any) -> list[dict[str, Any]]:
    """Keep the events we can use (objects with an ``sg_event_id`` and an ``event``), with only our fields."""
    if not isinstance(events, list):
        return []
    kept = []
    for event in events:
        if not isinstance(event, dict):
            continue
        item = {k: event[k] for k in FIELDS if isinstance(event.get(k), str | int | float) and k in event}
        if isinstance(item.get("sg_event_id"), str) and isinstance(item.get("event"), str):
            kept.append(item)
    return kept


def _delivery_id(event: dict[str, Any]) -> int | None:
    raw = event.get("delivery_id")
    text = str(raw) if isinstance(raw, int | str) else ""
    return int(text) if text.isdigit() and len(text) < 19 else None


def _message_prefix(event: dict[str, Any]) -> str | None:
    prefix = str(event.get("sg_message_id") or "").split(".", 1)[0]
    return prefix or None


def _reason(event: dict[str, Any]) -> str:
    text = str(event.get("reason") or event.get("response") or "").strip()
    return redact(" ".join(text.split()))[:500]


def _suppression(event: dict[str, Any]) -> str | None:
    """Why this event suppresses its address, if it does."""
    kind = event["event"]
    if kind == "bounce" and str(event.get("type") or "bounce") != "blocked":
        return "bounce"
    if kind == "spamreport":
        return "spamreport"
    if kind == "dropped" and any(s in str(event.get("reason") or "").lower() for s in SUPPRESSING_DROPS):
        return "dropped"
    return None


def _resolve(session: Session, hasher: AddressHasher, events: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """sg_event_id -> the Delivery row (id, subscription_id, subscriber_id) it is about, where we have one."""
    by_id = {e["sg_event_id"]: _delivery_id(e) for e in events}
    fallback = {
        e["sg_event_id"]: (_message_prefix(e), address_hash(hasher, str(e.get("email") or "")))
        for e in events
        if by_id[e["sg_event_id"]] is None and _message_prefix(e) and e.get("email")
    }
    if fallback:
        prefixes = sorted({p for p, _ in fallback.values() if p})
        found: dict[tuple[str, str], int] = {}
        for start in range(0, len(prefixes), _CHUNK):
            rows = session.execute(
                select(Delivery.id, Delivery.provider_message_id, Subscriber.email_hash)
                .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
                .where(Delivery.provider_message_id.in_(prefixes[start : start + _CHUNK]))
            )
            found.update({(str(m), str(h)): int(i) for i, m, h in rows})
        for event_id, key in fallback.items():
            by_id[event_id] = found.get((str(key[0]), key[1]))
    ids = sorted({i for i in by_id.values() if i is not None})
    rows_by_id: dict[int, Any] = {}
    for start in range(0, len(ids), _CHUNK):
        query = select(Delivery.id, Delivery.subscription_id, Delivery.subscriber_id).where(
            Delivery.id.in_(ids[start : start + _CHUNK])
        )
        rows_by_id.update({int(r.id): r for r in session.execute(query)})
    return {event_id: rows_by_id.get(i) if i is not None else None for event_id, i in by_id.items()}


def _record_new(session: Session, events: Sequence[dict[str, Any]], deliveries: dict[str, Any]) -> set[str]:
    """Insert the events' ids; return the ones not seen before (the only ones to apply)."""
    now = utcnow()
    new: set[str] = set()
    for start in range(0, len(events), _CHUNK):
        chunk = events[start : start + _CHUNK]
        rows = [
            {
                "provider": PROVIDER,
                "provider_event_id": str(e["sg_event_id"])[:200],
                "event": str(e["event"])[:40],
                "delivery_id": deliveries[e["sg_event_id"]].id if deliveries[e["sg_event_id"]] is not None else None,
                "received_at": now,
            }
            for e in chunk
        ]
        stmt = insert_ignoring_conflicts(session, WebhookEvent, "provider_event_id")
        result = session.execute(stmt.values(rows).returning(WebhookEvent.provider_event_id))
        new.update(str(v) for v in result.scalars())
    return new


def _update_deliveries(
    session: Session, groups: dict[str, list[int]], status_from: Iterable[str], values: dict[str, Any]
) -> int:
    count = 0
    for error, ids in groups.items():
        for start in range(0, len(ids), _CHUNK):
            result = session.execute(
                update(Delivery)
                .where(Delivery.id.in_(ids[start : start + _CHUNK]), Delivery.status.in_(list(status_from)))
                .values(**values, error=error or None, updated_at=utcnow())
                .execution_options(synchronize_session=False)
            )
            count += int(getattr(result, "rowcount", 0) or 0)
    return count


def apply(session: Session, hasher: AddressHasher, raw_events: Any) -> WebhookReport:
    """Apply a list of SendGrid events inside the caller's transaction."""
    events = slim(raw_events)
    report = WebhookReport(received=len(raw_events) if isinstance(raw_events, list) else 0)
    unique: dict[str, dict[str, Any]] = {}
    for e in events:
        if e["event"] in HANDLED:
            unique.setdefault(str(e["sg_event_id"]), e)
        else:
            report.ignored += 1
    report.ignored += report.received - len(events)
    report.duplicates += sum(1 for e in events if e["event"] in HANDLED) - len(unique)
    if not unique:
        return report
    handled = list(unique.values())
    deliveries = _resolve(session, hasher, handled)
    new = _record_new(session, handled, deliveries)
    fresh = [e for e in handled if str(e["sg_event_id"])[:200] in new]
    report.duplicates += len(handled) - len(fresh)
    report.applied = len(fresh)

    failed: dict[str, list[int]] = defaultdict(list)
    deferred: dict[str, list[int]] = defaultdict(list)
    delivered: list[int] = []
    suppressions: list[NewSuppression] = []
    unsubscribe_ids: set[int] = set()
    unsubscribe_hashes: set[str] = set()
    for e in fresh:
        kind = e["event"]
        row = deliveries[e["sg_event_id"]]
        if row is None:
            report.unmatched += 1
        why = _suppression(e)
        if why and e.get("email"):
            detail = _reason(e) or None
            suppressions.append(NewSuppression(address_hash(hasher, str(e["email"])), why, f"sendgrid:{kind}", detail))
        if kind in ("unsubscribe", "group_unsubscribe"):
            if row is not None and row.subscription_id is not None:
                unsubscribe_ids.add(int(row.subscription_id))
            elif e.get("email"):
                unsubscribe_hashes.add(address_hash(hasher, str(e["email"])))
        if row is None:
            continue
        if kind in ("bounce", "dropped"):
            label = "blocked" if kind == "bounce" and e.get("type") == "blocked" else kind
            failed[f"{label}: {_reason(e)}".strip().rstrip(":")[:2000]].append(int(row.id))
        elif kind == "deferred":
            deferred[f"deferred by the receiving server: {_reason(e)}"[:2000]].append(int(row.id))
        elif kind == "delivered":
            delivered.append(int(row.id))

    report.suppressed = suppress_many(session, suppressions)
    active = [DeliveryStatus.SENT.value, DeliveryStatus.SENDING.value, DeliveryStatus.QUEUED.value]
    report.failed_deliveries = _update_deliveries(session, failed, active, {"status": DeliveryStatus.FAILED.value})
    # Notes only on a sent delivery: a later bounce must never be undone by an earlier "delivered".
    _update_deliveries(session, deferred, [DeliveryStatus.SENT.value], {})
    _update_deliveries(session, {"": delivered}, [DeliveryStatus.SENT.value], {})
    report.unsubscribed = _unsubscribe(session, unsubscribe_ids, unsubscribe_hashes)
    return report


def _unsubscribe(session: Session, subscription_ids: set[int], email_hashes: set[str]) -> int:
    count = 0
    now = utcnow()
    if email_hashes:
        subscriber_ids = select(Subscriber.id).where(Subscriber.email_hash.in_(sorted(email_hashes)))
        ids = session.scalars(select(Subscription.id).where(Subscription.subscriber_id.in_(subscriber_ids)))
        subscription_ids = subscription_ids | {int(i) for i in ids}
    ordered = sorted(subscription_ids)
    for start in range(0, len(ordered), _CHUNK):
        result = session.execute(
            update(Subscription)
            .where(
                Subscription.id.in_(ordered[start : start + _CHUNK]),
                Subscription.status != SubscriptionStatus.UNSUBSCRIBED.value,
            )
            .values(status=SubscriptionStatus.UNSUBSCRIBED.value, unsubscribed_at=now)
            .execution_options(synchronize_session=False)
        )
        count += int(getattr(result, "rowcount", 0) or 0)
    return count


def apply_events(engine: Engine, hasher: AddressHasher, events: Any) -> WebhookReport:
    """Apply SendGrid events in one transaction (all or nothing: a failure leaves them to be retried)."""
    with transaction(engine) as session:
        report = apply(session, hasher, events)
    log.info(
        "webhook.applied",
        provider=PROVIDER,
        received=report.received,
        applied=report.applied,
        duplicates=report.duplicates,
        ignored=report.ignored,
        unmatched=report.unmatched,
        suppressed=report.suppressed,
        unsubscribed=report.unsubscribed,
        failed_deliveries=report.failed_deliveries,
    )
    return report
