"""The event pipeline as plain functions: ingest an event, send a batch, send a confirmation.

Celery tasks, the CLI and the HTTP API all call these; queueing is passed in as ``Enqueue`` so this
module never imports Celery, and work is queued only after the transaction that created it commits.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol

import structlog
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from alerts import counters, emails, fanout, signups
from alerts.db import transaction
from alerts.digests import schedule, send
from alerts.digests.send import Context as DigestContext
from alerts.digests.send import DigestReport
from alerts.events import InvalidEvent, TrialEvent, excerpt, parse_event, printable
from alerts.intake import Accepted, accept
from alerts.matching import batch_ranges
from alerts.models import Event, EventStatus, RejectedEvent, Subscription, SubscriptionStatus, Suppression
from alerts.rendering import Content
from alerts.runtime import Runtime
from alerts.sending import SendReport, answers_since, answers_snapshot, send_increments, send_range
from alerts.subscriptions import describe
from alerts.tokens import Purpose
from alerts.transports.base import Batch, Outcome, Recipient

log = structlog.get_logger("alerts.pipeline")


class Enqueue(Protocol):
    def send_batch(self, event_id: int, after_id: int, upto_id: int) -> None: ...

    def send_confirmation(self, subscription_id: int, also: Sequence[int] = ()) -> None: ...

    def process_signup(self, request_id: int) -> None: ...

    def trial_event(self, payload: dict[str, Any]) -> None: ...

    def process_webhook(self, events: list[dict[str, Any]]) -> None: ...


@dataclass(frozen=True)
class Rejected:
    rejection_id: int
    errors: list[dict[str, str]]


def reject(runtime: Runtime, payload: Any, errors: list[dict[str, str]], source: str) -> Rejected:
    event_type = payload.get("type") if isinstance(payload, dict) else None
    event_id = payload.get("event_id") if isinstance(payload, dict) else None
    with transaction(runtime.engine) as session:
        row = RejectedEvent(
            source=source,
            event_type=printable(str(event_type), 100) if event_type is not None else None,
            producer_event_id=printable(str(event_id), 200) if event_id is not None else None,
            errors=errors,
            payload_excerpt=excerpt(payload),
        )
        session.add(row)
        session.flush()
        rejection_id = row.id
    log.warning("event.rejected", rejection_id=rejection_id, source=source, errors=errors)
    return Rejected(rejection_id, errors)


def validate(runtime: Runtime, payload: Any, source: str, expected_type: str | None = None) -> TrialEvent | Rejected:
    try:
        return parse_event(payload, expected_type)
    except InvalidEvent as exc:
        return reject(runtime, payload, [e.as_dict() for e in exc.errors], source)


def _accept(runtime: Runtime, event: TrialEvent) -> Accepted:
    # Two producers racing with the same event: the unique idempotency key lets one win; the loser
    # retries and finds it. Same for two first versions of one trial racing to insert its snapshot.
    for attempt in range(3):
        try:
            with transaction(runtime.engine) as session:
                return accept(
                    session,
                    event,
                    runtime.renderer,
                    runtime.site,
                    runtime.settings.fanout_first_chunk,
                    catch_up_days=runtime.settings.catch_up_days,
                )
        except IntegrityError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def dispatch(runtime: Runtime, event_id: int, enqueue: Enqueue) -> int:
    """Queue one send task per batch of the event's deliveries. Returns the number of batches."""
    count = 0
    with transaction(runtime.engine) as session:
        for after_id, upto_id in batch_ranges(session, event_id, runtime.settings.batch_size):
            enqueue.send_batch(event_id, after_id, upto_id)
            count += 1
    return count


def ingest(
    runtime: Runtime, payload: Any, enqueue: Enqueue, source: str, expected_type: str | None = None
) -> Accepted | Rejected:
    event = validate(runtime, payload, source, expected_type)
    if isinstance(event, Rejected):
        return event
    return after_commit(runtime, event, _accept(runtime, event), enqueue)


def after_commit(runtime: Runtime, event: TrialEvent, outcome: Accepted, enqueue: Enqueue) -> Accepted:
    """What follows an accepted event once its transaction committed: queue its sending, fan out the rest.

    ``ingest`` calls it for each event; the registry watcher for each event of a page it committed.
    """
    timings = dict(outcome.timings)
    batches = 0
    if outcome.caught_up:
        # Earlier new trials that followers of a phrase whose meaning just grew had missed (alerts.catchup).
        with transaction(runtime.engine) as session:
            for caught in outcome.caught_up:
                for after_id, upto_id in batch_ranges(
                    session, caught.event_id, runtime.settings.batch_size, after_id=caught.after_id
                ):
                    enqueue.send_batch(caught.event_id, after_id, upto_id)
                    batches += 1
        log.info("vocabulary.caught_up", events={c.event_id: c.deliveries for c in outcome.caught_up})
    if outcome.status == "duplicate" and _fanning_out(runtime, outcome.event_id):
        # Redelivered (the worker that took it died mid fan-out) or published twice while it fans out:
        # carry on from the last committed chunk; runs over one event take turns (alerts.fanout).
        batches = fan_out(runtime, outcome.event_id, enqueue).batches
    if outcome.status in (EventStatus.FANNED_OUT, EventStatus.FANNING_OUT) and outcome.recipients:
        started = time.perf_counter()
        after_id, upto_id = outcome.rows
        if outcome.status == EventStatus.FANNED_OUT and outcome.recipients <= runtime.settings.batch_size and upto_id:
            # All its deliveries, in one batch: their ids are known (most events, and every one a registry
            # pass publishes), so no transaction is opened to number them.
            enqueue.send_batch(outcome.event_id, after_id, upto_id)
            batches = 1
        else:
            batches = dispatch(runtime, outcome.event_id, enqueue)
        timings["dispatch_s"] = time.perf_counter() - started
    if outcome.status == EventStatus.FANNING_OUT:
        # A large audience: the first chunk is on its way; create (and queue) the rest chunk by chunk.
        started = time.perf_counter()
        report = fan_out(runtime, outcome.event_id, enqueue, outcome.render)
        timings["fanout_s"] = time.perf_counter() - started
        batches += report.batches
        outcome = replace(outcome, status=report.status, recipients=report.recipients, timings=timings)
    log.info(
        "event.accepted",
        event_id=outcome.event_id,
        nct_id=event.nct_id,
        type=event.type,
        status=outcome.status,
        recipients=outcome.recipients,
        held=outcome.held,
        batches=batches,
        reason=outcome.reason,
        timings={k: round(v, 4) for k, v in timings.items()},
    )
    return outcome


def _fanning_out(runtime: Runtime, event_id: int) -> bool:
    with transaction(runtime.engine) as session:
        return session.scalar(select(Event.status).where(Event.id == event_id)) == EventStatus.FANNING_OUT


def fan_out(
    runtime: Runtime, event_id: int, enqueue: Enqueue, render: Callable[[str | None], Content] | None = None
) -> fanout.FanOut:
    """Create (and queue the sending of) what is left of an event's deliveries: see alerts.fanout.

    Without ``render`` this is a resumed fan-out (its first run died): see ``fanout.run``.
    """
    return fanout.run(
        runtime.engine,
        event_id,
        chunk_size=runtime.settings.fanout_chunk_size,
        batch_size=runtime.settings.batch_size,
        enqueue_batch=enqueue.send_batch,
        render=render,
        resume=render is None,
    )


def deliver(runtime: Runtime, event_id: int, after_id: int, upto_id: int) -> SendReport:
    report = send_range(
        runtime.engine,
        runtime.transport,
        runtime.links,
        runtime.sender,
        event_id,
        after_id,
        upto_id,
        runtime.settings.send_lease_s,
        runtime.renderings,
    )
    log.info(
        "batch.sent",
        event_id=event_id,
        after_id=after_id,
        upto_id=upto_id,
        **_tally(report),
    )
    return report


def _tally(report: SendReport | DigestReport) -> dict[str, Any]:
    """What a batch of alerts and a batch of digests both report: the log lines an operator compares."""
    return {
        "claimed": report.claimed,
        "sent": report.sent,
        "failed": report.failed,
        "retry": report.retry,
        "skipped": report.skipped,
        "suppressed": report.suppressed,
        "timings": {k: round(v, 4) for k, v in report.timings.items()},
    }


def backoff_seconds(retries: int, retry_after_s: float | None = None, cap: float = 300.0, base: float = 2.0) -> float:
    """Exponential backoff with jitter (base, 2*base, 4*base...), never sooner than the provider asked."""
    ceiling = min(cap, base * 2.0**retries)
    delay = random.uniform(ceiling / 2, ceiling)
    return max(delay, retry_after_s or 0.0)


def process_signup(runtime: Runtime, request_id: int, enqueue: Enqueue) -> str:
    """Decide a recorded sign-up (``alerts.signups``) and queue its one confirmation email after commit."""
    decision = None
    for attempt in range(3):
        try:
            with transaction(runtime.engine) as session:
                decision = signups.decide(session, request_id, runtime.signer, runtime.hasher)
            break
        except IntegrityError:
            # Two sign-ups for one new address raced; the loser finds the winner's rows next time.
            if attempt == 2:
                raise
    if decision is None:
        return "gone"
    log.info(
        "signup.decided",
        request_id=request_id,
        to_confirm=decision.to_confirm,
        already_active=decision.already_active,
    )
    if decision.to_confirm:
        first, *also = decision.to_confirm
        enqueue.send_confirmation(first, also)
        return "confirmation queued"
    return "nothing to confirm"


def send_confirmation(runtime: Runtime, subscription_id: int, also: Sequence[int] = ()) -> str:
    """Render and send ONE double opt-in email for the pending ones among these subscriptions (one
    subscriber's, as one sign-up asked for them); its link confirms them all. Returns what happened."""
    with transaction(runtime.engine) as session:
        first = session.get(Subscription, subscription_id)
        if first is None:
            return "not pending"
        pending = [
            sub
            for sub in (first, *(session.get(Subscription, i) for i in dict.fromkeys(also) if i != subscription_id))
            if sub is not None and sub.subscriber_id == first.subscriber_id and sub.status == SubscriptionStatus.PENDING
        ]
        if not pending:
            return "not pending"
        subscriber = first.subscriber
        what = [describe(session, sub) for sub in pending]
        ids = [sub.id for sub in pending]
        email, email_hash = subscriber.email, subscriber.email_hash
        if session.scalar(select(Suppression.id).where(Suppression.email_hash == email_hash)):
            return "suppressed"
    days = max(1, runtime.settings.confirm_max_age_s // 86400)
    content: Content = runtime.renderer.render(
        emails.CONFIRM, {**runtime.site, **emails.confirm_subscription(what, days)}
    )
    token = runtime.signer.sign(Purpose.CONFIRM, ids)
    recipient = Recipient(
        delivery_id=ids[0],
        email=email,
        values={"confirm_url": runtime.links.confirm(token), "unsubscribe_url": "", "manage_url": ""},
        message_id=runtime.links.message_id(f"confirm-{ids[0]}", time.time_ns()),
    )
    batch = Batch(
        content=content,
        recipients=[recipient],
        from_email=runtime.sender[0],
        from_name=runtime.sender[1],
        category="confirm",
    )
    answered_before = answers_snapshot(runtime.transport)
    result = runtime.transport.send(batch)[0]
    with transaction(runtime.engine) as session:
        counters.add(session, send_increments([result], answers_since(runtime.transport, answered_before)))
    log.info("confirmation.sent", subscription_ids=ids, outcome=result.outcome.value)
    if result.outcome is Outcome.RETRY:
        raise RuntimeError(f"confirmation email not accepted: {result.error}")
    return result.outcome.value


# --- digests (alerts.digests) -------------------------------------------------------------------------


def digest_context(runtime: Runtime) -> DigestContext:
    return DigestContext(
        engine=runtime.engine,
        transport=runtime.transport,
        links=runtime.links,
        signer=runtime.signer,
        renderer=runtime.renderer,
        site=runtime.site,
        sender=runtime.sender,
        lease_s=runtime.settings.send_lease_s,
        pack_limit_bytes=runtime.settings.digest_pack_limit_bytes,
    )


def digest_tick(
    runtime: Runtime, enqueue_digests: Callable[[int, int], None], now: datetime | None = None
) -> schedule.TickReport:
    """Close every digest window due ``now`` (default: the clock); each chunk's sending is queued as soon as
    that chunk commits, so the first digests leave while later chunks are still being closed."""
    batches = 0

    def enqueue(after_id: int, upto_id: int) -> None:
        nonlocal batches
        batches += 1
        enqueue_digests(after_id, upto_id)

    report = schedule.tick(runtime.engine, runtime.settings.batch_size, now, enqueue=enqueue)
    if report.groups or report.skipped:
        log.info(
            "digests.tick",
            groups=report.groups,
            due=report.due,
            digests=report.digests,
            batches=batches,
            chunks=report.chunks,
            skipped=report.skipped,
        )
    return report


def send_digests(runtime: Runtime, after_id: int, upto_id: int) -> DigestReport:
    report = send.send_range(digest_context(runtime), after_id, upto_id)
    log.info(
        "digests.sent",
        after_id=after_id,
        upto_id=upto_id,
        empty=report.empty,
        shared_batches=report.shared_batches,
        packed=report.packed,
        alone=report.alone,
        content_chars=report.content_chars,
        shortened=report.shortened,
        omitted=report.omitted,
        **_tally(report),
    )
    return report
