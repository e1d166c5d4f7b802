"""The Celery application. Tasks live in sibling modules and stay thin: they call alerts.pipeline."""

from __future__ import annotations

import gc
import sys
from pathlib import Path
from typing import Any

from celery import Celery, Task
from celery.signals import beat_init, setup_logging, task_postrun, task_prerun, worker_process_init, worker_ready
from kombu.entity import Exchange, Queue

from alerts.config import Settings, get_settings

EVENTS_QUEUE = "events"
DELIVERIES_QUEUE = "deliveries"
MAINTENANCE_QUEUE = "maintenance"
ALL_QUEUES = ",".join((EVENTS_QUEUE, DELIVERIES_QUEUE, MAINTENANCE_QUEUE))
# Longest beat sleeps between looks at its schedule; its heartbeat is never older than this plus a tick.
BEAT_MAX_LOOP_S = 30


def worker_command(
    *,
    app_module: str = "alerts.tasks.app",
    queues: str = ALL_QUEUES,
    concurrency: int = 2,
    pool: str | None = None,
    loglevel: str = "INFO",
    hostname: str | None = None,
    standalone: bool = False,
) -> list[str]:
    """The command line of a Celery worker of this app, in this interpreter.

    ``standalone``: a worker that does not talk to other workers at start-up (no gossip, no mingle), as
    the demo, tests, benchmarks and chaos scenarios run it.
    """
    command = [sys.executable, "-m", "celery", "-A", app_module, "worker", "--queues", queues]
    command += ["--concurrency", str(concurrency), "--loglevel", loglevel]
    if pool:
        command += ["--pool", pool]
    if standalone:
        command += ["--without-gossip", "--without-mingle"]
    if hostname:
        command += ["--hostname", hostname]
    return command


# The filesystem broker with safe reads of message files (see that module); kombu's own otherwise.
FILESYSTEM_TRANSPORT = "alerts.tasks.filesystem_broker:Transport"


def quarantine_folder(settings: Settings) -> Path:
    """Where the filesystem broker moves message files that stayed unreadable (alerts status counts them)."""
    return settings.broker_dir / "quarantine"


def broker_options(settings: Settings) -> dict[str, Any]:
    if settings.broker_url.startswith("filesystem"):
        folder = settings.broker_dir / "messages"
        processed = settings.broker_dir / "processed"
        control = settings.broker_dir / "control"
        for path in (folder, processed, control):
            path.mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(folder),
            "data_folder_out": str(folder),
            "processed_folder": str(processed),
            "control_folder": str(control),
            "store_processed": False,
            "quarantine_folder": str(quarantine_folder(settings)),
            "unreadable_grace_s": settings.broker_unreadable_grace_s,
        }
    # Redis: a message not acked within this time is redelivered (see docs/operations.md).
    options: dict[str, Any] = {
        "visibility_timeout": settings.broker_visibility_timeout_s,
        # Half-open connections are noticed instead of hanging a worker.
        "socket_timeout": 30,
        "socket_connect_timeout": 10,
        "health_check_interval": 30,
    }
    if settings.broker_prefix:
        options["global_keyprefix"] = settings.broker_prefix
    return options


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    schedule: dict[str, dict[str, Any]] = {
        "maintenance": {
            "task": "alerts.maintenance.run",
            "schedule": settings.maintenance_interval_s,
            "options": {"queue": MAINTENANCE_QUEUE, "expires": settings.maintenance_interval_s},
        },
        # One tick closes every due digest window with one grouped query (alerts.digests.schedule).
        "digests": {
            "task": "alerts.digests.tick",
            "schedule": settings.digest_tick_s,
            "options": {"queue": MAINTENANCE_QUEUE, "expires": settings.digest_tick_s},
        },
    }
    if settings.watch_enabled:
        # A pass that runs longer than the interval makes the next one return "busy" (the lock).
        schedule["watch"] = {
            "task": "alerts.watch.run",
            "schedule": settings.watch_interval_s,
            "options": {"queue": MAINTENANCE_QUEUE, "expires": settings.watch_interval_s},
        }
    return schedule


def create_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery("alerts")
    app.conf.update(
        broker_url=settings.broker_url,
        # Given explicitly, the transport wins over the URL's scheme (kombu.Connection).
        broker_transport=FILESYSTEM_TRANSPORT if settings.broker_url.startswith("filesystem") else None,
        broker_transport_options=broker_options(settings),
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        task_default_queue=DELIVERIES_QUEUE,
        task_queues=[Queue(q, Exchange(q), routing_key=q) for q in (EVENTS_QUEUE, DELIVERIES_QUEUE, MAINTENANCE_QUEUE)],
        task_routes={
            "alerts.events.*": {"queue": EVENTS_QUEUE, "routing_key": EVENTS_QUEUE},
            "alerts.delivery.*": {"queue": DELIVERIES_QUEUE, "routing_key": DELIVERIES_QUEUE},
            "alerts.subscriptions.*": {"queue": DELIVERIES_QUEUE, "routing_key": DELIVERIES_QUEUE},
            "alerts.maintenance.*": {"queue": MAINTENANCE_QUEUE, "routing_key": MAINTENANCE_QUEUE},
            "alerts.digests.tick": {"queue": MAINTENANCE_QUEUE, "routing_key": MAINTENANCE_QUEUE},
            "alerts.digests.send": {"queue": DELIVERIES_QUEUE, "routing_key": DELIVERIES_QUEUE},
            "alerts.webhooks.*": {"queue": DELIVERIES_QUEUE, "routing_key": DELIVERIES_QUEUE},
            "alerts.watch.*": {"queue": MAINTENANCE_QUEUE, "routing_key": MAINTENANCE_QUEUE},
        },
        # Acknowledge after the task ran, and give the message back if the worker process died: a killed
        # worker never loses an event or a batch. Our tasks are idempotent, so a re-run is harmless.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # One message at a time per process: a prefetched message would wait behind a slow batch.
        worker_prefetch_multiplier=1,
        # On a broker reconnect, let running tasks finish: cancelling would cut a send mid-request.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        # Task events cost a Redis publish per task sent and per task state: only when asked for
        # (ALERTS_TASK_EVENTS); Flower enables them in the workers it watches (see config.task_events).
        worker_send_task_events=settings.task_events,
        task_send_sent_event=settings.task_events,
        enable_utc=True,
        imports=[
            "alerts.tasks.events",
            "alerts.tasks.delivery",
            "alerts.tasks.subscriptions",
            "alerts.tasks.maintenance",
            "alerts.tasks.webhooks",
            "alerts.tasks.watch",
            "alerts.tasks.digests",
        ],
        # Beat's scheduler touches ALERTS_BEAT_HEARTBEAT_FILE after each tick, and ticks at least every 30 s.
        beat_scheduler="alerts.tasks.beat:HeartbeatScheduler",
        beat_max_loop_interval=BEAT_MAX_LOOP_S,
        beat_schedule=beat_schedule(settings),
    )
    if settings.result_backend:
        app.conf.result_backend = settings.result_backend
    return app


app = create_app()


@worker_process_init.connect
def _fresh_connections(**_: Any) -> None:
    # A forked child must not reuse its parent's database connections.
    from alerts.runtime import set_runtime

    set_runtime(None)
    # Everything alive now (modules, SQLAlchemy's mappings, compiled schemas) lives as long as the process:
    # keep it out of the collector's full passes. A 1000-recipient batch allocates enough to trigger one
    # every few batches, and each walked all of it: 75 ms, about 10% of the send time (measured).
    gc.freeze()


@setup_logging.connect
def _logging(**_: Any) -> None:
    # Connected, so Celery leaves logging to us: JSON lines (or text) with addresses masked.
    from alerts.logs import configure_logging

    configure_logging(get_settings())


@worker_ready.connect
@beat_init.connect
def _warn_at_start(sender: Any = None, **_: Any) -> None:
    from alerts.logs import warn_at_start

    warn_at_start(get_settings(), "beat" if type(sender).__name__ == "Service" else "worker")


@task_prerun.connect
def _bind_task(task_id: str | None = None, task: Task | None = None, **_: Any) -> None:
    import structlog

    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(task_id=task_id, task=getattr(task, "name", None))


@task_postrun.connect
def _unbind_task(**_: Any) -> None:
    import structlog

    structlog.contextvars.clear_contextvars()
