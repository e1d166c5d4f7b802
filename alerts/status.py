"""What operators need at a glance: queue depths, workers, mail flow, event and delivery figures, failures.

Gathered from the database and the broker; used by ``alerts status``, ``GET /ops`` and ``/metrics``.
Every part that cannot be read (broker down, broadcast unsupported) says so instead of failing, and a number
that could not be read is None ("unknown"), never 0. One function gathers each section, and one function per
section says what in it needs attention (``PROBLEM_SECTIONS``): a new section adds both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from celery import Celery
from sqlalchemy import Engine, func, select

from alerts import counters, signups
from alerts.config import Settings, startup_warnings
from alerts.db import transaction
from alerts.models import Delivery, DeliveryStatus, Event, RejectedEvent, Suppression, utcnow
from alerts.tasks.app import DELIVERIES_QUEUE, EVENTS_QUEUE, MAINTENANCE_QUEUE, quarantine_folder
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
class MailFlow:
    """Is mail leaving now? From the counters every sending process writes (alerts.counters)."""

    last_sent_at: str | None  # when the provider last accepted an email (ISO 8601), None: never
    last_sent_ago_s: float | None
    sent_last_5_min: int
    per_minute_last_5_min: float
    # Requests the provider answered 429 ("slow down") in the last hour; sends wait and retry.
    throttled_last_hour: int
    provider_answers_last_hour: dict[str, int]  # status code -> requests
    provider_timeouts_last_hour: int
    # Recipients sent again in the last 24 hours after a request whose acceptance was unknown (a timeout)
    # or a worker that died mid-send: some of them may have received the email twice.
    possible_duplicates_last_day: int


@dataclass
class Quarantine:
    """Filesystem broker only: message files that stayed unreadable, moved aside (alerts.tasks.filesystem)."""

    folder: str
    files: int


@dataclass
class Status:
    generated_at: str
    queues: dict[str, int | None]  # None: could not be read ("unknown"), never shown as 0
    broker_error: str | None
    workers: Workers
    events: dict[str, dict[str, int]]  # window -> outcome -> count
    deliveries: dict[str, int]
    oldest_undelivered_s: float | None
    stuck_sending: int
    ambiguous_retries: int
    top_failures: list[dict[str, Any]]
    suppressions: int
    mail: MailFlow | None = None
    quarantine: Quarantine | None = None
    warnings: list[str] = field(default_factory=list)  # settings that leave something off (config)
    watch: watch_status.WatchStatus | None = None  # the registry watcher (alerts.watch.status)
    # Sign-ups recorded by the web and not yet decided by a worker (alerts.signups): people waiting for
    # their confirmation email. A worker decides one in well under a second.
    signups_waiting: int = 0
    oldest_signup_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        problems = self.problems
        data["attention"] = problems
        data["all_clear"] = not problems
        return data

    @property
    def problems(self) -> list[str]:
        """Plain-language list of what needs attention, for the CLI and the ops page: one function per section."""
        found: list[str] = []
        for section in PROBLEM_SECTIONS:
            found += section(self)
        return found


def _broker_problems(status: Status) -> list[str]:
    found = []
    if status.broker_error:
        found.append(f"broker unreachable: {status.broker_error}")
    unknown = [name for name, depth in status.queues.items() if depth is None]
    if unknown and not status.broker_error:
        found.append(f"queue depth unknown for {', '.join(unknown)}")
    if status.workers.available and not status.workers.online:
        found.append("no worker online")
    if status.quarantine is not None and status.quarantine.files:
        found.append(
            f"{status.quarantine.files} unreadable broker message file(s) moved to {status.quarantine.folder}: "
            "read them, republish what they held, then delete them"
        )
    return found


def _delivery_problems(status: Status) -> list[str]:
    found = []
    if status.oldest_undelivered_s is not None and status.oldest_undelivered_s > 900:
        found.append(f"oldest undelivered email waiting {status.oldest_undelivered_s / 60:.0f} min")
    if status.stuck_sending:
        found.append(f"{status.stuck_sending} deliveries stuck in 'sending' past their lease")
    if status.deliveries.get(DeliveryStatus.FAILED.value):
        found.append(f"{status.deliveries[DeliveryStatus.FAILED.value]} failed deliveries (alerts deliveries failed)")
    return found


def _mail_problems(status: Status) -> list[str]:
    mail = status.mail
    if mail is None:
        return []
    found = []
    if mail.possible_duplicates_last_day:
        found.append(
            f"possible duplicates: {mail.possible_duplicates_last_day} emails sent again in the last 24 h after a "
            "request stalled or a worker died (the first try may have arrived)"
        )
    if mail.throttled_last_hour:
        found.append(f"provider throttling: {mail.throttled_last_hour} requests answered 429 in the last hour")
    waiting = sum(status.deliveries.get(s, 0) for s in UNDELIVERED)
    if waiting and not mail.sent_last_5_min and (status.oldest_undelivered_s or 0) > 300:
        found.append(f"mail is not flowing: nothing sent in the last 5 minutes while {waiting} emails wait")
    return found


def _signup_problems(status: Status) -> list[str]:
    age = status.oldest_signup_s
    if age is None or age <= signups.REQUEUE_AFTER_S:
        return []
    return [
        f"{status.signups_waiting} sign-ups waiting for a worker, the oldest for {age / 60:.0f} min: "
        "those people have no confirmation email yet"
    ]


def _event_problems(status: Status) -> list[str]:
    rejected = status.events["hour"].get("rejected")
    return [f"{rejected} events rejected in the last hour (alerts events rejected)"] if rejected else []


def _config_problems(status: Status) -> list[str]:
    return list(status.warnings)


def _watch_problems(status: Status) -> list[str]:
    return list(status.watch.problems) if status.watch is not None else []


PROBLEM_SECTIONS: list[Callable[[Status], list[str]]] = [
    _broker_problems,
    _delivery_problems,
    _mail_problems,
    _signup_problems,
    _event_problems,
    _watch_problems,
    _config_problems,
]


def queue_depths(app: Celery) -> tuple[dict[str, int | None], str | None]:
    """Messages waiting per queue; None where it could not be read (shown as "unknown", never as 0)."""
    depths: dict[str, int | None] = dict.fromkeys(QUEUES)
    try:
        with app.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
            channel = conn.default_channel
            for name in QUEUES:
                depths[name] = _depth(channel, name)
    except Exception as exc:  # any broker problem is shown, not raised
        return depths, f"{type(exc).__name__}: {exc}"[:300]
    return depths, None


def _depth(channel: Any, queue: str) -> int | None:
    # kombu's virtual transports (Redis, filesystem) count a queue with _size: LLEN of each priority list on
    # Redis, through the client that adds ALERTS_BROKER_PREFIX. A passive declare is no substitute: on Redis
    # it asks EXISTS, which kombu does not prefix, so under a prefix every queue looked missing (and was
    # shown as 0 while Redis held the messages). A missing list has LLEN 0: truly nothing waiting.
    size = getattr(channel, "_size", None)
    try:
        if size is not None:
            return int(size(queue))
        return int(channel.queue_declare(queue=queue, passive=True).message_count)
    except Exception:  # ChannelError ("not found" is not "empty"), a broken connection...: unknown
        return None


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


def mail_flow(engine: Engine, now: datetime | None = None) -> MailFlow:
    """Last send, sends per minute over the last 5 minutes, provider answers and re-sends (alerts.counters)."""
    now = now or utcnow()
    with transaction(engine) as session:
        last = counters.last(session, counters.SENT)
        sent_5 = counters.since(session, counters.SENT, now - timedelta(minutes=5)).get("", 0)
        answers = counters.since(session, counters.PROVIDER_ANSWERS, now - timedelta(hours=1))
        timeouts = counters.since(session, counters.PROVIDER_TIMEOUTS, now - timedelta(hours=1)).get("", 0)
        resends = counters.since(session, counters.AMBIGUOUS_RESENDS, now - timedelta(days=1))
    return MailFlow(
        last_sent_at=last.isoformat() if last else None,
        last_sent_ago_s=max(0.0, (now - last).total_seconds()) if last else None,
        sent_last_5_min=sent_5,
        per_minute_last_5_min=round(sent_5 / 5, 1),
        throttled_last_hour=answers.get("429", 0),
        provider_answers_last_hour=dict(sorted(answers.items())),
        provider_timeouts_last_hour=timeouts,
        possible_duplicates_last_day=sum(resends.values()),
    )


def ambiguous_resends_total(engine: Engine) -> int:
    with transaction(engine) as session:
        return sum(n for (name, _), n in counters.totals(session).items() if name == counters.AMBIGUOUS_RESENDS)


def quarantine(settings: Settings) -> Quarantine | None:
    """Files the filesystem broker moved aside because they stayed unreadable; None for other brokers."""
    if not settings.broker_url.startswith("filesystem"):
        return None
    folder = quarantine_folder(settings)
    files = sum(1 for p in folder.iterdir() if p.is_file()) if folder.is_dir() else 0
    return Quarantine(folder=str(Path(folder)), files=files)


def collect(engine: Engine, app: Celery, inspect_workers: bool = True, settings: Settings | None = None) -> Status:
    """Every section; ``settings`` adds the ones that depend on them (config warnings, broker quarantine, the
    registry watcher)."""
    now = utcnow()
    depths, broker_error = queue_depths(app)
    worker_info = (
        workers(app)
        if inspect_workers and broker_error is None
        else Workers(available=False, note="skipped" if broker_error is None else "broker unreachable")
    )
    by_status, age, stuck, _per_row_retries, top, suppressions = delivery_figures(engine)
    ambiguous = ambiguous_resends_total(engine)
    with transaction(engine) as session:
        signups_waiting, oldest_signup = signups.waiting(session)
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
        mail=mail_flow(engine, now),
        quarantine=quarantine(settings) if settings is not None else None,
        warnings=startup_warnings(settings) if settings is not None else [],
        watch=watch_status.collect(engine, settings) if settings is not None else None,
        signups_waiting=signups_waiting,
        oldest_signup_s=oldest_signup,
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
