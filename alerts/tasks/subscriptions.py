"""``alerts.subscriptions.send_confirmation``: the double opt-in email."""

from __future__ import annotations

from celery import Task

from alerts import pipeline
from alerts.runtime import get_runtime
from alerts.tasks.app import app


@app.task(
    name="alerts.subscriptions.send_confirmation",
    bind=True,
    autoretry_for=(Exception,),
    retry_backoff=True,
    retry_backoff_max=600,
    retry_jitter=True,
    max_retries=6,
)
def send_confirmation(self: Task, subscription_id: int) -> str:
    return pipeline.send_confirmation(get_runtime(), subscription_id)
