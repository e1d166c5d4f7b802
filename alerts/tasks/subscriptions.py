"""``alerts.subscriptions.*``: deciding a recorded sign-up, and the double opt-in email."""

from __future__ import annotations

from celery import Task

from alerts import pipeline
from alerts.runtime import get_runtime
from alerts.tasks.app import app
from alerts.tasks.enqueue import CeleryEnqueue


@app.task(
    name="alerts.subscriptions.process_signup",
    bind=True,
    autoretry_for=(Exception,),
    retry_backoff=True,
    retry_backoff_max=600,
    retry_jitter=True,
    max_retries=12,
)
def process_signup(self: Task, request_id: int) -> str:
    return pipeline.process_signup(get_runtime(), request_id, CeleryEnqueue())


@app.task(
    name="alerts.subscriptions.send_confirmation",
    bind=True,
    autoretry_for=(Exception,),
    retry_backoff=True,
    retry_backoff_max=600,
    retry_jitter=True,
    max_retries=6,
)
def send_confirmation(self: Task, subscription_id: int, also: list[int] | None = None) -> str:
    return pipeline.send_confirmation(get_runtime(), subscription_id, also or ())
