"""``alerts.maintenance.run``: the periodic pass (scheduled by Celery beat, see tasks/app.py)."""

from __future__ import annotations

from dataclasses import asdict

from alerts import maintenance
from alerts.runtime import get_runtime
from alerts.tasks.app import app
from alerts.tasks.enqueue import CeleryEnqueue


@app.task(name="alerts.maintenance.run", ignore_result=True)
def run() -> dict[str, int]:
    runtime = get_runtime()
    settings = runtime.settings
    enqueue = CeleryEnqueue()
    report = maintenance.run(
        runtime.engine,
        enqueue.send_batch,
        enqueue_fan_out=enqueue.fan_out,
        enqueue_signup=enqueue.process_signup,
        fanout_stale_s=settings.send_lease_s,
        batch_size=settings.batch_size,
        stale_after_s=settings.stale_queued_s,
        pending_days=settings.pending_expiry_days,
        retention_days=settings.retention_days,
        enqueue_digests=enqueue.send_digests,
    )
    return asdict(report)
