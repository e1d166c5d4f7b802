"""Queueing through Celery by task name (the same names any producer can use)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery import Celery

from alerts.runtime import Runtime
from alerts.tasks.app import app as default_app


class CeleryEnqueue:
    def __init__(self, app: Celery | None = None) -> None:
        self.app = app or default_app

    def send_batch(self, event_id: int, after_id: int, upto_id: int) -> None:
        self.app.send_task("alerts.delivery.send_batch", args=[event_id, after_id, upto_id])

    def send_digests(self, after_id: int, upto_id: int) -> None:
        self.app.send_task("alerts.digests.send", args=[after_id, upto_id])

    def fan_out(self, event_id: int) -> None:
        self.app.send_task("alerts.events.fan_out", args=[event_id])

    def send_confirmation(self, subscription_id: int, also: Sequence[int] = ()) -> None:
        args: list[Any] = [subscription_id, list(also)] if also else [subscription_id]
        self.app.send_task("alerts.subscriptions.send_confirmation", args=args)

    def process_signup(self, request_id: int) -> None:
        self.app.send_task("alerts.subscriptions.process_signup", args=[request_id])

    def process_webhook(self, events: list[dict[str, Any]]) -> None:
        self.app.send_task("alerts.webhooks.process_sendgrid", args=[events])

    def trial_event(self, payload: dict[str, Any]) -> None:
        name = {
            "trial.changed": "alerts.events.trial_changed",
            "trial.new_for_condition": "alerts.events.new_trial_for_condition",
        }[str(payload["type"])]
        self.app.send_task(name, args=[payload])


def celery_enqueue(runtime: Runtime) -> CeleryEnqueue:
    """A watcher lane's queue (``alerts.watch.lanes``): built in the lane, by name, from its runtime."""
    return CeleryEnqueue()
