"""``alerts.webhooks.process_sendgrid``: apply a list of SendGrid Event Webhook events (verified by the web app)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from celery import Task
from sqlalchemy.exc import InterfaceError, OperationalError

from alerts import webhooks
from alerts.runtime import get_runtime
from alerts.tasks.app import app


@app.task(
    name="alerts.webhooks.process_sendgrid",
    bind=True,
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=True,
    retry_backoff_max=300,
    retry_jitter=True,
    max_retries=12,
)
def process_sendgrid(self: Task, events: Any = None) -> dict[str, int]:
    runtime = get_runtime()
    return asdict(webhooks.apply_events(runtime.engine, runtime.hasher, events))
