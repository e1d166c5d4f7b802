"""Redis, the broker, restarts without persistence in the middle of a fan-out: every queued message is gone.

The machine's Redis on 6379 is shared with other test runs, so this scenario starts its own
``redis-server --save "" --appendonly no`` on a free port, points the workers, beat and the producer at it,
and kills it (SIGKILL) and starts it again, empty, while send tasks are queued and running. What was on the
broker - the send tasks of the batches not yet started, the "unacked" bookkeeping of the running ones,
kombu's queue bindings - is lost; the database still knows every delivery. Workers and beat must reconnect
by themselves, and the maintenance pass must put the lost batches back on the queue (queued deliveries
untouched for ``ALERTS_STALE_QUEUED_S``).

Guarantee: every recipient gets the email, none gets two (no provider fault is injected; a lost message can
only delay an email, and the claims keep a re-queued batch from being sent twice).
"""

from __future__ import annotations

import sys

from chaos.harness import Harness, Options, RedisServer, Result, log, parser, report, resolve, sleep_random

FULL_N, FAST_N = 20_000, 2_000


def run(n: int, fast: bool, seed: int, restarts: int = 1, timeout_s: float | None = None) -> Result:
    options = Options(
        "redis_restart",
        n,
        fast,
        seed,
        batch_size=200 if fast else 1000,
        standin_args=["--latency", "0.3"],  # a backlog of send tasks waits on the broker when Redis goes
        settle_timeout_s=timeout_s or (90 if fast else 300),
    )
    h = Harness(options)
    h.run_dir.mkdir(parents=True, exist_ok=True)
    server = RedisServer(h.run_dir).start()
    h.broker_url = f"{server.url}/0"
    try:
        with h:
            h.start_services()
            h.publish()
            if not h.wait_deliveries():
                return h.finish({"restarts": 0, "seed": seed}, timeout_s=1)
            lost = 0
            for threshold in sorted(h.rng.uniform(0.1, 0.6) for _ in range(restarts)):
                h.wait_progress(threshold)
                sleep_random(h.rng, 0.0, 0.4)
                if not h.pending():
                    log("fan-out finished before this restart")
                    break
                backlog = h.broker_backlog()
                down = h.rng.uniform(0.5, 2.0)
                server.restart(down_s=down)
                lost += backlog
                log(f"redis restarted (down {down:.1f}s) at {h.progress()}/{n} accepted; {backlog} messages lost")
            result = h.finish({"restarts": server.restarts, "lost_messages": lost, "seed": seed})
            if server.restarts < restarts:
                result.problems.append(f"only {server.restarts} of {restarts} restarts happened during the fan-out")
            return result
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    p = parser("redis_restart", __doc__.splitlines()[0], FULL_N, FAST_N)
    p.add_argument("--restarts", type=int, default=1, help="restarts during the fan-out")
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait for the end condition")
    args = p.parse_args(argv)
    n, seed = resolve(args, FULL_N, FAST_N)
    return report(run(n, args.fast, seed, args.restarts, args.timeout))


if __name__ == "__main__":
    sys.exit(main())
