"""The same event, published five times at the same instant by five different producers.

Producers (all at one agreed ``time.time()``):

1. a thread of this process, Celery task by name, *with* ``event_id``;
2. another process (``chaos.publisher``, plain Celery, none of our code), task by name, with ``event_id``;
3. a thread, task by name, *without* ``event_id`` (the event's identity is then a hash of its JSON);
4. another process, task by name, without ``event_id``;
5. ``POST /api/events`` to a real web process (uvicorn), with ``event_id``.

Two workers with two processes each consume them, so the copies really are processed concurrently. With and
without ``event_id`` are two different events to the service (two idempotency keys); what keeps them from
sending twice is that deliveries are unique per piece of news and subscriber.

Guarantee: every recipient gets exactly one email; the five copies make at most two event rows (one per
idempotency key), their recipients add up to N, and nothing is rejected.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from chaos.harness import INGEST_TOKEN, Harness, Options, Result, log, parser, producer_app, report, resolve

FULL_N, FAST_N = 20_000, 2_000


def run(n: int, fast: bool, seed: int, timeout_s: float | None = None) -> Result:
    options = Options(
        "duplicate_publish",
        n,
        fast,
        seed,
        batch_size=200 if fast else 1000,
        settle_timeout_s=timeout_s or (90 if fast else 300),
    )
    with Harness(options) as h:
        h.start_services(workers=2)
        _, web_url = h.start_web()
        with_id, without_id = h.event(), h.event(event_id=None)
        files = {}
        for name, event in (("with-id", with_id), ("without-id", without_id)):
            files[name] = h.run_dir / f"event-{name}.json"
            files[name].write_text(json.dumps(event))
        at = time.time() + 3.0  # every producer is connected by then
        outcomes: dict[str, str] = {}

        def celery_thread(event: dict[str, Any]) -> Callable[[], str]:
            def publish() -> str:
                app = producer_app(h.broker_url, h.broker_prefix)
                with app.connection_for_write() as conn:
                    conn.ensure_connection(max_retries=3)
                    time.sleep(max(0.0, at - time.time()))
                    app.send_task(
                        "alerts.events.new_trial_for_condition", args=[event], queue="events", connection=conn
                    )
                app.close()
                return "sent"

            return publish

        def http_post() -> str:
            request = urllib.request.Request(
                web_url + "/api/events",
                data=json.dumps(with_id).encode(),
                method="POST",
                headers={"Content-Type": "application/json", "Authorization": f"Bearer {INGEST_TOKEN}"},
            )
            time.sleep(max(0.0, at - time.time()))
            with urllib.request.urlopen(request, timeout=30) as response:
                return f"http {response.status}"

        processes = {
            name: subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "chaos.publisher",
                    "--broker",
                    h.broker_url,
                    "--prefix",
                    h.broker_prefix,
                    "--at",
                    str(at),
                    str(files[key]),
                ],
                cwd=h.run_dir.parents[2],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for name, key in (("process+id", "with-id"), ("process-id", "without-id"))
        }
        jobs = {"thread+id": celery_thread(with_id), "thread-id": celery_thread(without_id), "http+id": http_post}

        def call(name: str, job: Callable[[], str]) -> None:
            try:
                outcomes[name] = job()
            except Exception as exc:
                outcomes[name] = f"error {type(exc).__name__}: {exc}"

        threads = [threading.Thread(target=call, args=item) for item in jobs.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for name, proc in processes.items():
            out, _ = proc.communicate(timeout=60)
            outcomes[name] = "sent" if proc.returncode == 0 else f"error: {out.strip()[-500:]}"
        log(f"published: {outcomes}")
        result = h.finish({"publishes": len(outcomes), "seed": seed})
        with h.db() as conn:
            events = conn.execute("SELECT idempotency_key, status, recipients FROM events ORDER BY id").fetchall()
            rejected = conn.execute("SELECT count(*) FROM rejected_events").fetchone()
        result.extra["events"] = len(events)
        result.extra["fanned_out"] = "+".join(str(r[2]) for r in events)
        failed = {k: v for k, v in outcomes.items() if v not in ("sent", "http 202")}
        if failed:
            result.problems.append(f"publishing failed: {failed}")
        if len(events) > 2:
            result.problems.append(f"{len(events)} event rows for 2 idempotency keys: {events}")
        if sum(int(r[2]) for r in events) != n:
            result.problems.append(f"event recipients add up to {sum(int(r[2]) for r in events)}, not {n}")
        if rejected and rejected[0]:
            result.problems.append(f"{rejected[0]} copies were rejected")
        return result


def main(argv: list[str] | None = None) -> int:
    p = parser("duplicate_publish", __doc__.splitlines()[0], FULL_N, FAST_N)
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait for the end condition")
    args = p.parse_args(argv)
    n, seed = resolve(args, FULL_N, FAST_N)
    return report(run(n, args.fast, seed, args.timeout))


if __name__ == "__main__":
    sys.exit(main())
