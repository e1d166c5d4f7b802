"""A producer that knows nothing of our code: publishes one event file by Celery task name at a given moment.

``python -m chaos.publisher --broker URL --prefix P --at EPOCH EVENT.json`` - what docs/events.md tells any
producer to do (plain ``Celery(broker=...).send_task(name, args=[event], queue="events")``), used by
``chaos.duplicate_publish`` to publish from other processes at the same instant.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from celery import Celery

TASKS = {
    "trial.changed": "alerts.events.trial_changed",
    "trial.new_for_condition": "alerts.events.new_trial_for_condition",
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m chaos.publisher", description=__doc__.splitlines()[0])
    p.add_argument("--broker", required=True)
    p.add_argument("--prefix", default="")
    p.add_argument("--at", type=float, default=0.0, help="publish at this time.time() (0: now)")
    p.add_argument("event", type=Path)
    args = p.parse_args(argv)
    event = json.loads(args.event.read_text())
    app = Celery("producer", broker=args.broker)
    app.conf.update(broker_transport_options={"global_keyprefix": args.prefix}, task_serializer="json")
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=3)
        time.sleep(max(0.0, args.at - time.time()))
        app.send_task(TASKS[event["type"]], args=[event], queue="events", connection=conn)
    print(f"published at {time.time():.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
