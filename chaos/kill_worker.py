"""kill -9 the worker at random moments of a fan-out, three times, starting it again each time.

What is killed (``--mode``):

* ``tree`` (default): the worker's main process and its prefork pool children together, with SIGKILL to the
  whole process group - what the OOM killer of a container, ``docker kill`` or a lost machine does. Nothing of
  the worker gets to say goodbye: the messages it had reserved stay "unacked" in Redis until the broker's
  visibility timeout (an hour), so recovery must come from the database - deliveries stuck in ``sending``
  past their lease, and ``queued`` ones nobody touched, are re-queued by the maintenance pass (beat).
* ``children``: only the pool processes (an OOM kill of one child, a segfault). The parent survives, gives
  the message back (``task_reject_on_worker_lost``) and forks new children; the rows the dead child had
  claimed still wait for their lease.
* ``term``: no kill -9 but SIGTERM to the main process, as a deploy or ``docker stop`` does: Celery's warm
  shutdown lets the running tasks finish, then the worker is started again. No email may be sent twice.
* ``term-group``: SIGTERM to every process of the worker at once, as systemd's default
  ``KillMode=control-group`` does on ``systemctl stop``. Same guarantee as ``term``.

``tree`` is the harder case (it is also everything ``children`` does), so it is the default. Kills fall in the
sending phase (after the event's transaction committed), at random points of the progress, plus a random
delay; ``--ingest-kill`` adds one kill while the event itself is being processed (see chaos/README.md).

Guarantee: every recipient gets the email; an extra email is allowed only for a delivery that was in
``sending`` at the moment of a kill (its request may have reached the provider: acceptance unknown).
"""

from __future__ import annotations

import sys
import time

from chaos.harness import Harness, Options, Result, Worker, log, now, parser, report, resolve, sleep_random

FULL_N, FAST_N = 20_000, 2_000


def run(
    n: int,
    fast: bool,
    seed: int,
    kills: int | None = None,
    mode: str = "tree",
    ingest_kill: bool = False,
    timeout_s: float | None = None,
) -> Result:
    kills = kills if kills is not None else (2 if fast else 3)
    options = Options(
        "kill_worker",
        n,
        fast,
        seed,
        batch_size=200 if fast else 1000,
        # A provider answer takes time (SendGrid: ~0.3-1 s for 1000 personalizations): kills land mid-request too.
        standin_args=["--latency", "0.3"],
        settle_timeout_s=timeout_s or (90 if fast else 300),
    )
    with Harness(options) as h:
        (worker,) = h.start_services()
        h.publish()
        done = 0
        interrupted = 0
        if ingest_kill:
            # While the event task runs (the fan-out's INSERT ... SELECT has not committed).
            worker.wait_for_log(b"alerts.events.new_trial_for_condition[", timeout_s=30)
            time.sleep(0.3)
            interrupted += _kill(h, worker, mode)
            done += 1
            sleep_random(h.rng, 0.2, 2.0)
            if mode != "children":
                worker.start()
        if not h.wait_deliveries(timeout_s=timeout_s or 60):
            result = h.finish({"kills": done, "mode": mode, "seed": seed}, timeout_s=1)
            result.problems.append(f"the event was not processed; {h.unacked_messages()} messages unacked in Redis")
            return result
        thresholds = sorted(h.rng.uniform(0.02, 0.7) for _ in range(kills))
        for threshold in thresholds:
            h.wait_progress(threshold)
            sleep_random(h.rng, 0.0, 0.4)
            if not h.pending():
                log("fan-out finished before this kill")
                break
            interrupted += _kill(h, worker, mode)
            done += 1
            sleep_random(h.rng, 0.2, 2.0)  # down for a moment, as a restarting container would be
            if mode != "children":
                worker.start()
        result = h.finish({"kills": done, "mode": mode, "interrupted": interrupted, "seed": seed})
        if done < kills + ingest_kill:
            result.problems.append(f"only {done} of {kills + ingest_kill} kills happened during the fan-out")
        return result


def _kill(h: Harness, worker: Worker, mode: str) -> int:
    progress = h.progress()
    moment = now()
    if mode in ("term", "term-group"):
        # A deploy: SIGTERM, Celery's warm shutdown lets running tasks finish. Nothing may be left mid-send, so
        # nothing is marked interrupted: any extra email then counts as duplicated.
        started = time.monotonic()
        worker.stop(group=mode == "term-group")
        left = h.observe_sending()
        took = time.monotonic() - started
        log(f"SIGTERM at {progress}/{h.o.n} accepted; stopped in {took:.1f}s, {left} deliveries left in 'sending'")
        return 0
    pids = worker.kill_tree() if mode == "tree" else worker.kill_children()
    caught = h.mark_interrupted(since=moment)
    log(f"kill -9 ({mode}) pids {pids} at {progress}/{h.o.n} accepted; {caught} deliveries caught in 'sending'")
    return caught


def main(argv: list[str] | None = None) -> int:
    p = parser("kill_worker", __doc__.splitlines()[0], FULL_N, FAST_N)
    p.add_argument("--kills", type=int, default=None, help="kills during sending (default 3, or 2 with --fast)")
    modes = ["tree", "children", "term", "term-group"]
    p.add_argument("--mode", choices=modes, default="tree", help="what is killed and how (see the docstring)")
    p.add_argument("--ingest-kill", action="store_true", help="also kill while the event itself is processed")
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait for the end condition")
    args = p.parse_args(argv)
    n, seed = resolve(args, FULL_N, FAST_N)
    return report(run(n, args.fast, seed, args.kills, args.mode, args.ingest_kill, args.timeout))


if __name__ == "__main__":
    sys.exit(main())
