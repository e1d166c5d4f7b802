"""``alerts.watch.run``: one registry watcher pass, scheduled by beat when ALERTS_WATCH_ENABLED is on."""

from __future__ import annotations

from typing import Any

from alerts.runtime import get_runtime
from alerts.tasks.app import app
from alerts.tasks.enqueue import CeleryEnqueue, celery_enqueue
from alerts.watch.passes import run_pass


@app.task(name="alerts.watch.run", ignore_result=True)
def run() -> dict[str, Any]:
    runtime = get_runtime()
    if not runtime.settings.watch_enabled:
        return {"outcome": "disabled"}
    # A pass already running (a slow bootstrap, a redelivered message) makes this one return "busy".
    lanes = runtime.settings.watch_lanes
    return run_pass(runtime, CeleryEnqueue(), lanes=lanes, lane_enqueue=celery_enqueue).as_dict()
