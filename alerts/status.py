"""What operators need at a glance: queue depths, workers, event and delivery figures, failures.

Gathered from the database and the broker; used by ``alerts status``, ``GET /ops`` and ``/metrics``.
Every part that cannot be read (broker down, broadcast unsupported) says so instead of failing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import Celery
from kombu.exceptions import ChannelError
from sqlalchemy import Engine, func, select

from alerts.config import Settings
from alerts.db import transaction
from alerts.models import Delivery, DeliveryStatus, Event, RejectedEvent, Suppression, utcnow
from alerts.tasks.app import DELIVERIES_QUEUE, EVENTS_QUEUE, MAINTENANCE_QUEUE
from alerts.watch import status as watch_status

QUEUES = (EVENTS_QUEUE, DELIVERIES_QUEUE, MAINTENANCE_QUEUE)
UNDELIVERED = (DeliveryStatus.QUEUED.value, DeliveryStatus.SENDING.value)


@dataclass
class Workers:
    available: bool
    online: list[str] = field(default_factory=list)
    active_tasks: dict[str, int] = field(default_factory=dict)
    note: str | None = None


@dataclass
class Status:
    generated_at: str
    queues: dict[str, int | None]
    broker_error: str | None
    workers: Workers
    events: dict[str, dict[str, int]]  # window -> outcome -> count
    deliveries: dict[str, int]
    oldest_undelivered_s: float | None
    stuck_sending: int
    ambiguous_retries: int
    top_failures: list[dict[str, Any]]
    suppressions: int
    watch: watch_status.WatchStatus | None = None  # the registry watcher (alerts.watch.status)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def problems(self) -> list[str]:
        """Plain-language list of what needs attention, for the CLI and the ops page."""
        found = []
        if self.broker_error:
            found.append(f"broker unreachable: {self.broker_error}")
        if self.workers.available and not self.workers.online:
            found.append("no worker online")
        if self.oldest_undelivered_s is not None and self.oldest_undelivered_s > 900:
            found.append(f"oldest undelivered email waiting {self.oldest_undelivered_s / 60:.0f} min")
        if self.stuck_sending:
            found.append(f"{self.stuck_sending} deliveries stuck in 'sending' past their lease")
        if self.deliveries.get(DeliveryStatus.FAILED.value):
            found.append(f"{self.deliveries[DeliveryStatus.FAILED.value]} failed deliveries (alerts deliveries failed)")
        if self.events["hour"].get("rejected"):
            found.append(f"{self.events['hour']['rejected']} events rejected in the last hour (alerts events rejected)")
        if self.watch is not None:
            found += self.watch.problems
        return found


def queue_depths(app: Celery) -> tuple[dict[str, int | None], str | None]:
    depths: dict[str, int | None] = dict.fromkeys(QUEUES)
    try:
        with app.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
            channel = conn.default_channel
            for name in QUEUES:
                try:
                    declared = channel.queue_declare(queue=name, passive=True)
                    depths[name] = int(declared.message_count)
                except ChannelError:
                    # Redis keeps no key for an empty, never-used queue: nothing waiting.
                    depths[name] = 0
    except Exception as exc:  # any broker problem is shown, not raised
        return depths, f"{type(exc).__name__}: {exc}"[:300]
    return depths, None


def workers(app: Celery, timeout_s: float = 1.0) -> Workers:
    if app.conf.broker_url.startswith("filesystem"):
        return Workers(available=False, note="the filesystem broker cannot broadcast; worker list unavailable")
    try:
        inspect = app.control.inspect(timeout=timeout_s)
        replies = inspect.ping() or {}
        active = inspect.active() or {}
    except Exception as exc:
        return Workers(available=False, note=f"{type(exc).__name__}: {exc}"[:300])
    return Workers(
        available=True,
        online=sorted(replies),
        active_tasks={name: len(tasks or []) for name, tasks in active.items()},
    )


def _event_counts(engine: Engine, since: datetime) -> dict[str, int]:
    with transaction(engine) as session:
        rows = session.execute(
            select(Event.status, func.count()).where(Event.received_at >= since).group_by(Event.status)
        ).all()
        rejected = session.scalar(
            select(func.count()).select_from(RejectedEvent).where(RejectedEvent.received_at >= since)
        )
    counts = {str(status): int(n) for status, n in rows}
    received = sum(counts.values()) + int(rejected or 0)
    return {
        "received": received,
        # A large fan-out still creating its rows chunk by chunk (alerts.fanout) has fanned out too.
        "fanned_out": counts.get("fanned_out", 0) + counts.get("fanning_out", 0),
        "no_op": counts.get("no_op", 0),
        "rejected": int(rejected or 0),
    }


def delivery_figures(engine: Engine) -> tuple[dict[str, int], float | None, int, int, list[dict[str, Any]], int]:
    now = utcnow()
    with transaction(engine) as session:
        by_status = {
            str(s): int(n) for s, n in session.execute(select(Delivery.status, func.count()).group_by(Delivery.status))
        }
        oldest = session.scalar(select(func.min(Delivery.created_at)).where(Delivery.status.in_(UNDELIVERED)))
        stuck = session.scalar(
            select(func.count())
            .select_from(Delivery)
            .where(Delivery.status == DeliveryStatus.SENDING.value, Delivery.lease_until < now)
        )
        ambiguous = session.scalar(select(func.coalesce(func.sum(Delivery.ambiguous_retries), 0)))
        failures = session.execute(
            select(Delivery.error_code, Delivery.error, func.count().label("n"))
            .where(Delivery.status == DeliveryStatus.FAILED.value)
            .group_by(Delivery.error_code, Delivery.error)
            .order_by(func.count().desc())
            .limit(5)
        ).all()
        suppressions = session.scalar(select(func.count()).select_from(Suppression))
    if oldest is not None and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=UTC)
    age = (now - oldest).total_seconds() if oldest is not None else None
    top = [{"code": code, "error": error, "count": int(n)} for code, error, n in failures]
    return by_status, age, int(stuck or 0), int(ambiguous or 0), top, int(suppressions or 0)


def collect(engine: Engine, app: Celery, inspect_workers: bool = True, settings: Settings | None = None) -> Status:
    """Everything above; with ``settings``, also the registry watcher's section."""
    now = utcnow()
    depths, broker_error = queue_depths(app)
    worker_info = (
        workers(app)
        if inspect_workers and broker_error is None
        else Workers(available=False, note="skipped" if broker_error is None else "broker unreachable")
    )
    by_status, age, stuck, ambiguous, top, suppressions = delivery_figures(engine)
    return Status(
        generated_at=now.isoformat(),
        queues=depths,
        broker_error=broker_error,
        workers=worker_info,
        events={
            "hour": _event_counts(engine, now - timedelta(hours=1)),
            "day": _event_counts(engine, now - timedelta(days=1)),
        },
        deliveries={s.value: by_status.get(s.value, 0) for s in DeliveryStatus},
        oldest_undelivered_s=age,
        stuck_sending=stuck,
        ambiguous_retries=ambiguous,
        top_failures=top,
        suppressions=suppressions,
        watch=watch_status.collect(engine, settings) if settings is not None else None,
    )


def _minute(session_dialect: str, column: Any) -> Any:
    if session_dialect == "postgresql":
        return func.to_char(func.date_trunc("minute", column), 'YYYY-MM-DD"T"HH24:MI')
    return func.strftime("%Y-%m-%dT%H:%M", column)


def timeline(engine: Engine, hours: int = 24) -> dict[str, dict[str, int]]:
    """Deliveries sent and failed per minute over the last ``hours`` (minute -> {"sent", "failed"})."""
    since = utcnow() - timedelta(hours=hours)
    dialect = engine.dialect.name
    result: dict[str, dict[str, int]] = {}
    with transaction(engine) as session:
        sent_minute = _minute(dialect, Delivery.sent_at)
        for minute, n in session.execute(
            select(sent_minute, func.count()).where(Delivery.sent_at >= since).group_by(sent_minute)
        ):
            result.setdefault(str(minute), {"sent": 0, "failed": 0})["sent"] = int(n)
        failed_minute = _minute(dialect, Delivery.updated_at)
        for minute, n in session.execute(
            select(failed_minute, func.count())
            .where(Delivery.status == DeliveryStatus.FAILED.value, Delivery.updated_at >= since)
            .group_by(failed_minute)
        ):
            result.setdefault(str(minute), {"sent": 0, "failed": 0})["failed"] = int(n)
    return result


LATENCY_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


def latency_histogram(engine: Engine, hours: int = 1) -> tuple[list[tuple[float, int]], int, float]:
    """Seconds from delivery created to accepted by the transport, for deliveries sent in the last hours.

    Returns cumulative (le, count) buckets, total count and sum, bucketed in SQL.
    """
    since = utcnow() - timedelta(hours=hours)
    seconds: Any
    if engine.dialect.name == "postgresql":
        seconds = func.extract("epoch", Delivery.sent_at - Delivery.created_at)
    else:
        seconds = (func.julianday(Delivery.sent_at) - func.julianday(Delivery.created_at)) * 86400.0
    columns: list[Any] = [func.count(), func.coalesce(func.sum(seconds), 0.0)]
    columns += [func.count().filter(seconds <= bound) for bound in LATENCY_BUCKETS]
    with transaction(engine) as session:
        row = session.execute(select(*columns).where(Delivery.sent_at >= since)).one()
    total, total_seconds = int(row[0]), float(row[1])
    buckets = [(bound, int(n)) for bound, n in zip(LATENCY_BUCKETS, row[2:], strict=True)]
    return buckets, total, total_seconds
