"""``alerts.delivery.send_batch``: send one range of an event's deliveries."""

from __future__ import annotations

from typing import Any

from celery import Task
from sqlalchemy.exc import InterfaceError, OperationalError

from alerts import pipeline
from alerts.runtime import get_runtime
from alerts.sending import give_up
from alerts.tasks.app import app

MAX_SEND_RETRIES = 8
# How a send task (a batch of alerts, a range of digests) retries when the database is away: the same
# backoff for both, so they recover together.
SEND_RETRY: dict[str, Any] = {
    "autoretry_for": (OperationalError, InterfaceError),
    "retry_backoff": True,
    "retry_backoff_max": 300,
    "retry_jitter": True,
    "max_retries": MAX_SEND_RETRIES,
}


@app.task(
    name="alerts.delivery.send_batch",
    bind=True,
    **SEND_RETRY,
)
def send_batch(self: Task, event_id: int, after_id: int, upto_id: int) -> dict[str, Any]:
    runtime = get_runtime()
    report = pipeline.deliver(runtime, event_id, after_id, upto_id)
    if report.retry_ids:
        if self.request.retries >= MAX_SEND_RETRIES:
            give_up(runtime.engine, report.retry_ids, f"gave up after {MAX_SEND_RETRIES + 1} attempts")
        else:
            # Exponential backoff with jitter; the rows are back in 'queued', so the retry claims them.
            countdown = pipeline.backoff_seconds(
                self.request.retries, report.retry_after_s, base=runtime.settings.send_retry_base_s
            )
            raise self.retry(countdown=countdown)
    return {"sent": report.sent, "failed": report.failed, "retry": report.retry}
