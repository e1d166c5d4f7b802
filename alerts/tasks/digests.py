"""``alerts.digests.tick`` (beat, every ALERTS_DIGEST_TICK_S) and ``alerts.digests.send`` (a range of digests)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from celery import Task

from alerts import pipeline
from alerts.runtime import get_runtime
from alerts.tasks.app import app
from alerts.tasks.delivery import MAX_SEND_RETRIES, SEND_RETRY
from alerts.tasks.enqueue import CeleryEnqueue


@app.task(name="alerts.digests.tick", ignore_result=True)
def tick(now: str | None = None) -> dict[str, int]:
    """``now``: an ISO 8601 instant with offset to close the windows due then (operators, tests); default the clock.

    Safe to run twice (a duplicated beat, a redelivered message): windows are keys in the database.
    """
    instant = datetime.fromisoformat(now.replace("Z", "+00:00")) if now else None
    if instant is not None and instant.tzinfo is None:
        raise ValueError("now needs a UTC offset")
    report = pipeline.digest_tick(get_runtime(), CeleryEnqueue().send_digests, instant)
    return {
        "groups": report.groups,
        "due": report.due,
        "digests": report.digests,
        "chunks": report.chunks,
        "skipped": report.skipped,  # another tick was running (it closes everything due)
    }


@app.task(
    name="alerts.digests.send",
    bind=True,
    **SEND_RETRY,
)
def send(self: Task, after_id: int, upto_id: int) -> dict[str, Any]:
    runtime = get_runtime()
    report = pipeline.send_digests(runtime, after_id, upto_id)
    if report.retry and self.request.retries < MAX_SEND_RETRIES:
        # The digests are back in 'queued': the retry claims them again (a lost retry: maintenance).
        countdown = pipeline.backoff_seconds(
            self.request.retries, report.retry_after_s, base=runtime.settings.send_retry_base_s
        )
        raise self.retry(countdown=countdown)
    return {
        "sent": report.sent,
        "empty": report.empty,
        "failed": report.failed,
        "retry": report.retry,
        # Digests that left entries out to fit SendGrid's limit (they link to their whole page), and how many.
        "shortened": report.shortened,
        "omitted": report.omitted,
    }
