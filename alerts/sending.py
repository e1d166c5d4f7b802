"""Sending one batch of deliveries: claim the rows, hand the shared rendering(s) to the transport, record.

The claim (queued -> sending, with a lease) commits before the transport is called, so two workers never
send the same rows; if a worker dies mid-send, the lease runs out and maintenance re-queues the rows.
Results are recorded right after the transport returns.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, Engine, any_, bindparam, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from alerts import counters
from alerts.contents import Prepared, Renderings, prepare
from alerts.db import transaction
from alerts.models import (
    Delivery,
    DeliveryStatus,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    Suppression,
    utcnow,
)
from alerts.transports.base import TIMEOUT, UNREACHABLE, Batch, Outcome, Recipient, Result, Transport


@dataclass(frozen=True)
class Links:
    base_url: str
    domain: str
    # This installation's id (alerts.installation): a Message-ID never repeats across installations or
    # database rebuilds. Empty: ids without it (tests of the link format only).
    installation: str = ""

    def unsubscribe(self, token: str) -> str:
        return f"{self.base_url}/unsubscribe/{token}"

    def manage(self, token: str) -> str:
        return f"{self.base_url}/manage/{token}"

    def digest_unsubscribe(self, token: str) -> str:
        return f"{self.base_url}/unsubscribe/digest/{token}"

    def digest_view(self, token: str) -> str:
        # The whole digest, for an email that had to leave entries out (alerts.digests.assemble).
        return f"{self.base_url}/digest/{token}"

    def confirm(self, token: str) -> str:
        return f"{self.base_url}/confirm/{token}"

    def message_id(self, kind: str, object_id: int) -> str:
        # Stable per delivery: a retried send carries the same Message-ID, so mail systems can dedupe.
        head, tail = self.message_id_parts(kind)
        return f"{head}{object_id}{tail}"

    def message_id_parts(self, kind: str) -> tuple[str, str]:
        """What comes before and after the object id in ``message_id``: built once per batch when sending."""
        return f"<{kind}-", self._message_id_tail

    @cached_property
    def _message_id_tail(self) -> str:
        # The per-installation part, built once per process (cached_property writes the instance dict
        # directly, which a frozen dataclass allows).
        return f".{self.installation}@{self.domain}>" if self.installation else f"@{self.domain}>"


@dataclass
class SendReport:
    claimed: int = 0
    sent: int = 0
    failed: int = 0
    retry: int = 0
    skipped: int = 0
    suppressed: int = 0
    retry_ids: list[int] = field(default_factory=list)
    retry_after_s: float | None = None
    # Seconds per stage: claim (claim + read recipients), prepare, transport (build + http when the
    # transport reports them), record.
    timings: dict[str, float] = field(default_factory=dict)


def alert_headers() -> dict[str, str]:
    # RFC 8058 one-click unsubscribe; the URL is per recipient.
    return {
        "List-Unsubscribe": "<%%unsubscribe_url%%>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }


def _claim(session: Session, event_id: int, after_id: int, upto_id: int, lease_s: int) -> datetime | None:
    """queued -> sending for the range, under a lease whose exact value marks this claim's rows."""
    lease = utcnow() + timedelta(seconds=lease_s)
    result = session.execute(
        update(Delivery)
        .where(
            Delivery.event_id == event_id,
            Delivery.id > after_id,
            Delivery.id <= upto_id,
            Delivery.status == DeliveryStatus.QUEUED.value,
        )
        .values(
            status=DeliveryStatus.SENDING.value,
            lease_until=lease,
            attempts=Delivery.attempts + 1,
            updated_at=utcnow(),
        )
        .execution_options(synchronize_session=False)
    )
    return lease if int(getattr(result, "rowcount", 0) or 0) > 0 else None


def _recipients(session: Session, event_id: int, after_id: int, upto_id: int, lease: datetime) -> list[Any]:
    # The rows this claim took: same range, still sending, under exactly this lease (a range predicate on
    # the (event_id, id) index rather than a list of a thousand ids).
    # _classify and _group_recipients unpack the rows by position: keep the column order in step with them.
    query = (
        select(
            Delivery.id,
            Delivery.variant,
            Subscriber.email,
            Subscriber.manage_token,
            Subscription.unsubscribe_token,
            Subscription.status,
            Suppression.id.label("suppression_id"),
        )
        .join(Subscriber, Subscriber.id == Delivery.subscriber_id, isouter=True)
        .join(Subscription, Subscription.id == Delivery.subscription_id, isouter=True)
        .join(Suppression, Suppression.email_hash == Subscriber.email_hash, isouter=True)
        .where(
            Delivery.event_id == event_id,
            Delivery.id > after_id,
            Delivery.id <= upto_id,
            Delivery.status == DeliveryStatus.SENDING.value,
            Delivery.lease_until == lease,
        )
        .order_by(Delivery.id)
    )
    return list(session.execute(query))


def _mark(session: Session, ids: Sequence[int], status: DeliveryStatus, error: str | None = None) -> None:
    if ids:
        session.execute(
            update(Delivery)
            .where(Delivery.id.in_(ids))
            .values(status=status.value, error=error, lease_until=None, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )


_RECORDABLE = (DeliveryStatus.SENDING.value, DeliveryStatus.QUEUED.value)
_STATUS_FOR = {
    Outcome.SENT: DeliveryStatus.SENT,
    Outcome.FAILED: DeliveryStatus.FAILED,
    Outcome.RETRY: DeliveryStatus.QUEUED,  # back in the queue; the task retries it after a backoff
}


def _record_rows(session: Session, results: Sequence[Result], now: datetime) -> None:
    rows = []
    for r in results:
        sent = r.outcome is Outcome.SENT
        row: dict[str, Any] = {
            "id": r.delivery_id,
            "status": _STATUS_FOR[r.outcome].value,
            "error": None if sent else (r.error or r.outcome.value)[:2000],
            "error_code": None if sent else r.error_code,
            "lease_until": None,
            "updated_at": now,
        }
        if sent:
            row |= {"provider_message_id": r.provider_message_id, "sent_at": now}
        rows.append(row)
    for keys in {tuple(sorted(r)) for r in rows}:
        session.execute(update(Delivery), [r for r in rows if tuple(sorted(r)) == keys])
    ambiguous = [r.delivery_id for r in results if r.ambiguous]
    if ambiguous:
        session.execute(
            update(Delivery)
            .where(Delivery.id.in_(ambiguous))
            .values(ambiguous_retries=Delivery.ambiguous_retries + 1)
            .execution_options(synchronize_session=False)
        )


def _id_in(session: Session, ids: Sequence[int]) -> ColumnElement[bool]:
    """``id IN (...)``; on PostgreSQL one array parameter instead of a thousand (cheaper to bind and plan)."""
    if session.get_bind().dialect.name == "postgresql":
        return Delivery.id == any_(bindparam("record_ids", value=list(ids), type_=ARRAY(BigInteger())))
    return Delivery.id.in_(ids)


def send_increments(results: Sequence[Result], answers: Mapping[str, int] | None = None) -> dict[counters.Key, int]:
    """What one send adds to the counters (alerts.counters): recipients accepted, recipients put back after a
    request whose acceptance is unknown, and the provider's answers to the requests made (``answers``, from
    the transport: see transports.base)."""
    increments: dict[counters.Key, int] = {
        (counters.SENT, ""): sum(1 for r in results if r.outcome is Outcome.SENT),
        (counters.AMBIGUOUS_RESENDS, "timeout"): sum(1 for r in results if r.ambiguous),
    }
    for code, n in (answers or {}).items():
        if code == TIMEOUT:
            increments[(counters.PROVIDER_TIMEOUTS, "")] = n
        elif code == UNREACHABLE:
            increments[(counters.PROVIDER_UNREACHABLE, "")] = n
        else:
            increments[(counters.PROVIDER_ANSWERS, code[:40])] = n
    return increments


def answers_since(transport: object, before: Mapping[str, int] | None) -> dict[str, int] | None:
    """What the transport's ``answers`` counter gained since ``before`` (a copy taken before sending)."""
    answers = getattr(transport, "answers", None)
    if not isinstance(answers, Counter) or before is None:
        return None
    return {code: n - before.get(code, 0) for code, n in answers.items() if n != before.get(code, 0)}


def answers_snapshot(transport: object) -> dict[str, int] | None:
    answers = getattr(transport, "answers", None)
    return dict(answers) if isinstance(answers, Counter) else None


def record_results(
    session: Session, results: Sequence[Result], report: SendReport, answers: Mapping[str, int] | None = None
) -> None:
    """One UPDATE per distinct outcome, not one per recipient, and the batch's counters in one INSERT.

    A provider accepts a whole batch under one message id, so a 1000-recipient batch usually records in a
    single statement. The counters are written in the same transaction: counted exactly when recorded.
    """
    now = utcnow()
    groups: dict[tuple[Outcome, str | None, str | None, int | None, bool], list[int]] = defaultdict(list)
    for r in results:
        sent = r.outcome is Outcome.SENT
        error = None if sent else (r.error or r.outcome.value)[:2000]
        key = (r.outcome, r.provider_message_id if sent else None, error, None if sent else r.error_code, r.ambiguous)
        groups[key].append(r.delivery_id)
    if len(groups) > 20:
        # Per-recipient message ids (file, SMTP): one executemany by primary key instead of N statements.
        _record_rows(session, results, now)
        groups = {}
    counted = counters.insert_rows(send_increments(results, answers), now)
    if counted is not None and (not groups or session.get_bind().dialect.name != "postgresql"):
        session.execute(counted)
        counted = None
    for (outcome, message_id, error, error_code, ambiguous), ids in groups.items():
        values: dict[str, Any] = {
            "status": _STATUS_FOR[outcome].value,
            "error": error,
            "error_code": error_code,
            "lease_until": None,
            "updated_at": now,
        }
        if outcome is Outcome.SENT:
            values |= {"provider_message_id": message_id, "sent_at": now}
        if ambiguous:
            values["ambiguous_retries"] = Delivery.ambiguous_retries + 1
        statement = (
            update(Delivery)
            # 'queued' too: after a database outage maintenance may have put the rows back; recording the
            # acceptance now stops the re-send before a worker claims them.
            .where(_id_in(session, ids), Delivery.status.in_(_RECORDABLE))
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if counted is not None:
            # PostgreSQL: the counters ride along with the first UPDATE as a data-modifying CTE, so counting
            # costs no round trip of its own.
            statement = statement.add_cte(counted.cte("counted"))
            counted = None
        session.execute(statement)
    report.sent += sum(1 for r in results if r.outcome is Outcome.SENT)
    report.failed += sum(1 for r in results if r.outcome is Outcome.FAILED)
    report.retry += sum(1 for r in results if r.outcome is Outcome.RETRY)
    report.retry_ids.extend(r.delivery_id for r in results if r.outcome is Outcome.RETRY)
    waits = [r.retry_after_s for r in results if r.retry_after_s is not None]
    if waits:
        report.retry_after_s = max(waits)


def give_up(engine: Engine, ids: Sequence[int], error: str) -> None:
    """Retries exhausted: the rows become 'failed' (operators can re-queue them), not 'queued' forever."""
    with transaction(engine) as session:
        session.execute(
            update(Delivery)
            .where(Delivery.id.in_(list(ids)), Delivery.status == DeliveryStatus.QUEUED.value)
            .values(status=DeliveryStatus.FAILED.value, error=error, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )


RECORD_PATIENCE_S = 300.0


def _record(
    engine: Engine, results: Sequence[Result], report: SendReport, answers: Mapping[str, int] | None = None
) -> None:
    """The provider has answered: the acceptance must reach the database, or the rows would be sent again.

    So a database outage is waited out (up to RECORD_PATIENCE_S), retrying often so that once the
    database is back this write lands before maintenance can re-queue the rows; and it also applies to
    rows maintenance already put back in 'queued' (see record_results).
    """
    deadline = time.monotonic() + RECORD_PATIENCE_S
    attempt = 0
    while True:
        try:
            attempt_report = SendReport()
            with transaction(engine) as session:
                record_results(session, results, attempt_report, answers)
            break
        except (OperationalError, InterfaceError):
            if time.monotonic() > deadline:
                raise
            time.sleep(min(1.0, 0.1 * 2**attempt))
            attempt += 1
    report.sent += attempt_report.sent
    report.failed += attempt_report.failed
    report.retry += attempt_report.retry
    report.retry_ids += attempt_report.retry_ids
    if attempt_report.retry_after_s is not None:
        report.retry_after_s = max(report.retry_after_s or 0.0, attempt_report.retry_after_s)


def _classify(rows: Sequence[Any]) -> tuple[list[int], list[int], list[Any], set[str | None]]:
    """Claimed rows -> (ids to skip, ids suppressed, rows to send, their variants), in one pass.

    Skipping (no address, or the subscription is no longer active) wins over suppression, so each row
    lands in exactly one of the three.
    """
    active = SubscriptionStatus.ACTIVE.value  # hoisted: an enum attribute lookup per row adds up
    skipped: list[int] = []
    suppressed: list[int] = []
    sendable: list[Any] = []
    variants: set[str | None] = set()
    for row in rows:
        # By position (the column order of _recipients): reading one attribute of a SQLAlchemy Row costs
        # ~0.4 us, more than unpacking all seven columns.
        delivery_id, variant, email, _manage_token, _unsubscribe_token, status, suppression_id = row
        if email is None or status != active:
            skipped.append(delivery_id)
        elif suppression_id is not None:
            suppressed.append(delivery_id)
        else:
            sendable.append(row)
            variants.add(variant)
    return skipped, suppressed, sendable, variants


def _group_recipients(
    rows: Sequence[Any], links: Links, prepared: Mapping[str | None, Prepared]
) -> dict[str | None, list[Recipient]]:
    """A Recipient per row (its links, fragments and Message-ID), by rendering. Runs for every recipient."""
    # The link builders append the token to a fixed prefix, and the Message-ID differs only by the id:
    # build the fixed parts once, not per row.
    unsubscribe_prefix = links.unsubscribe("")
    manage_prefix = links.manage("")
    message_id_head, message_id_tail = links.message_id_parts("delivery")
    groups: dict[str | None, list[Recipient]] = {}
    for row in rows:
        delivery_id, variant, email, manage_token, unsubscribe_token, _status, _suppression_id = row
        ready = prepared.get(variant)
        if ready is None:
            continue  # no rendering at all: the caller refuses the send
        values = {
            "unsubscribe_url": f"{unsubscribe_prefix}{unsubscribe_token}",
            "manage_url": f"{manage_prefix}{manage_token}",
            **ready.values,
        }
        recipient = Recipient(
            delivery_id, email, values, f"{message_id_head}{delivery_id}{message_id_tail}", ready.subject
        )
        group = groups.get(ready.key)
        if group is None:
            group = groups[ready.key] = []
        group.append(recipient)
    return groups


def send_range(
    engine: Engine,
    transport: Transport,
    links: Links,
    sender: tuple[str, str],
    event_id: int,
    after_id: int,
    upto_id: int,
    lease_s: int,
    known: Renderings | None = None,
) -> SendReport:
    """Send the queued deliveries of ``event_id`` with after_id < id <= upto_id (``known``: the process's
    renderings already read, ``contents.Renderings``)."""
    report = SendReport()
    clock = time.perf_counter
    started = clock()
    with transaction(engine) as session:
        lease = _claim(session, event_id, after_id, upto_id, lease_s)
        if lease is None:
            return report
        rows = _recipients(session, event_id, after_id, upto_id, lease)
        report.claimed = len(rows)
        skipped, suppressed, sendable, variants = _classify(rows)
        _mark(session, skipped, DeliveryStatus.SKIPPED, "subscription ended before sending")
        _mark(session, suppressed, DeliveryStatus.SUPPRESSED, "address is suppressed")
        # One shared rendering per followed label (alerts.contents), and each outcome's fragments.
        prepared = prepare(session, event_id, variants, known)
    report.skipped = len(skipped)
    report.suppressed = len(suppressed)
    report.timings["claim_s"] = clock() - started
    started = clock()
    missing = [variant for variant in variants if variant not in prepared]
    if missing:
        raise RuntimeError(f"event {event_id} has deliveries but no rendered content for {len(missing)} variant(s)")
    groups = _group_recipients(sendable, links, prepared)
    if not groups:
        return report
    contents = {ready.key: ready.content for ready in prepared.values()}
    report.timings["prepare_s"] = clock() - started
    transport_timings = getattr(transport, "timings", None)
    before = dict(transport_timings) if isinstance(transport_timings, dict) else {}
    # One transport batch per variant, each with its shared rendering; each recorded as soon as the
    # provider answered, so a crash later in the loop never causes a second send of an accepted batch.
    for variant, recipients in groups.items():
        batch = Batch(
            content=contents[variant],
            recipients=recipients,
            from_email=sender[0],
            from_name=sender[1],
            headers=alert_headers(),
        )
        started = clock()
        answered_before = answers_snapshot(transport)
        try:
            results = transport.send(batch)
        except Exception as exc:
            # Unknown failure of the whole batch: put the rows back so a retry (or maintenance) sends them.
            error = f"{type(exc).__name__}: {exc}"[:500]
            results = [Result(r.delivery_id, Outcome.RETRY, error=error) for r in recipients]
        report.timings["transport_s"] = report.timings.get("transport_s", 0.0) + clock() - started
        started = clock()
        _record(engine, results, report, answers_since(transport, answered_before))
        report.timings["record_s"] = report.timings.get("record_s", 0.0) + clock() - started
    if isinstance(transport_timings, dict):
        for name, value in transport_timings.items():
            report.timings[name] = value - before.get(name, 0.0)
    return report
