"""Event consumers: ``alerts.events.trial_changed`` and ``alerts.events.new_trial_for_condition``.

``alerts.events.fan_out`` (internal, queued by maintenance) resumes a large fan-out whose worker died.

Each takes one argument, the event dict, so producers in any language can publish them.
"""

from __future__ import annotations

from typing import Any

from celery import Task
from sqlalchemy.exc import InterfaceError, OperationalError

from alerts import pipeline
from alerts.events import NEW_TRIAL_FOR_CONDITION, TRIAL_CHANGED
from alerts.runtime import get_runtime
from alerts.tasks.app import app
from alerts.tasks.enqueue import CeleryEnqueue

# Only a database outage is worth retrying; an invalid event is recorded and never retried.
RETRYABLE = (OperationalError, InterfaceError)
EVENT_TASK_OPTIONS: dict[str, Any] = {
    "bind": True,
    "autoretry_for": RETRYABLE,
    "retry_backoff": True,
    "retry_backoff_max": 300,
    "retry_jitter": True,
    "max_retries": 12,
}


def _run(
    task: Task, expected: str, event: Any, extra_args: tuple[Any, ...], extra_kwargs: dict[str, Any]
) -> dict[str, Any]:
    runtime = get_runtime()
    if extra_args or extra_kwargs:
        rejected = pipeline.reject(
            runtime,
            event,
            [{"field": "(task)", "message": "takes exactly one argument, the event object"}],
            "celery",
        )
        return {"rejected": rejected.rejection_id, "errors": rejected.errors}
    outcome = pipeline.ingest(runtime, event, CeleryEnqueue(), source="celery", expected_type=expected)
    if isinstance(outcome, pipeline.Rejected):
        return {"rejected": outcome.rejection_id, "errors": outcome.errors}
    return {"event_id": outcome.event_id, "status": outcome.status, "recipients": outcome.recipients}


@app.task(name="alerts.events.trial_changed", **EVENT_TASK_OPTIONS)
def trial_changed(self: Task, event: Any = None, *args: Any, **kwargs: Any) -> dict[str, Any]:
    return _run(self, TRIAL_CHANGED, event, args, kwargs)


@app.task(name="alerts.events.fan_out", **EVENT_TASK_OPTIONS)
def fan_out(self: Task, event_id: int) -> dict[str, Any]:
    """Resume a fan-out whose worker died (queued by maintenance); a no-op for an event already done."""
    report = pipeline.fan_out(get_runtime(), event_id, CeleryEnqueue())
    return {"event_id": event_id, "status": report.status, "recipients": report.recipients, "created": report.created}


@app.task(name="alerts.events.new_trial_for_condition", **EVENT_TASK_OPTIONS)
def new_trial_for_condition(self: Task, event: Any = None, *args: Any, **kwargs: Any) -> dict[str, Any]:
    return _run(self, NEW_TRIAL_FOR_CONDITION, event, args, kwargs)
