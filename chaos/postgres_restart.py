"""PostgreSQL goes away in the middle of a fan-out and comes back.

Full scenario (``make chaos``): the machine's PostgreSQL cluster is really stopped and started again
(``pg_ctlcluster --skip-systemctl-redirect <version> main stop``, a few seconds down, then ``start``). The
cluster is shared: every other user of it (other test runs, other schemas) is disconnected too, for those
seconds. That is acceptable for ``make chaos``, which is run on purpose, but not for ``make test``.

Fast variant (``--fast``, run by ``make test``): the shared cluster is left alone. The service processes
log in as a role of their own (``chaos_<run>``, privileges on this run's schema only); for the same few
seconds that role may not log in (``ALTER ROLE ... NOLOGIN``) and every backend of the workers is
terminated (``pg_terminate_backend`` on ``pg_stat_activity`` rows with this run's ``application_name``,
which the workers carry in their database URL). For the service that is the same event - open
connections die mid-statement, new ones are refused - and nobody else notices.

Either way the outage starts while a mail-send request is out at the provider, so its answer comes back to
a service without a database: the case that decides whether an accepted batch is recorded or sent again.

Guarantee: every recipient gets the email and none gets two. No provider fault is injected, so there is no
ambiguity: the provider's answer always arrived; if it was not recorded, that is the service's doing.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psycopg

from chaos.harness import PG_ADMIN, Harness, Options, Result, log, parser, report, resolve, sleep_random

FULL_N, FAST_N = 20_000, 2_000


def pg_ready(timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if subprocess.run(["pg_isready", "-h", "127.0.0.1", "-q"], check=False).returncode == 0:
            return True
        time.sleep(0.1)
    return False


def restart_cluster(down_s: float) -> None:
    """Stop the shared cluster, wait, start it again - and whatever happens, leave it running."""
    version = sorted(p.name for p in Path("/etc/postgresql").iterdir())[0]
    ctl = ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main"]
    try:
        subprocess.run([*ctl, "stop"], check=True, capture_output=True)  # "fast" mode: active sessions are cut
        time.sleep(down_s)
    finally:
        subprocess.run([*ctl, "start"], check=False, capture_output=True)
        if not pg_ready():
            raise RuntimeError("PostgreSQL did not come back after the restart")


def lock_out(role: str, application_name: str, down_s: float) -> int:
    """This run's service processes lose the database for ``down_s`` seconds; nobody else notices.

    Their role may not log in (new connections fail like a refused connection) and their backends, found by
    ``application_name``, are terminated (open connections die mid-statement). Returns backends terminated.
    """
    killed = 0
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"ALTER ROLE {role} NOLOGIN")
        try:
            deadline = time.monotonic() + down_s
            while time.monotonic() < deadline:
                rows = conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = 'test' AND application_name = %s",
                    (application_name,),
                ).fetchall()
                killed += sum(1 for (ok,) in rows if ok)
                time.sleep(0.05)
        finally:
            conn.execute(f"ALTER ROLE {role} LOGIN")
    return killed


def run(
    n: int, fast: bool, seed: int, outages: int = 1, down_s: float | None = None, timeout_s: float | None = None
) -> Result:
    options = Options(
        "postgres_restart",
        n,
        fast,
        seed,
        batch_size=200 if fast else 1000,
        standin_args=["--latency", "0.3"],  # requests are out at the provider when the database goes
        settle_timeout_s=timeout_s or (90 if fast else 300),
        db_role=fast,
    )
    with Harness(options) as h:
        h.start_services()
        h.publish()
        if not h.wait_deliveries():
            return h.finish({"outages": 0, "seed": seed}, timeout_s=1)
        done = 0
        terminated = 0
        for threshold in sorted(h.rng.uniform(0.1, 0.6) for _ in range(outages)):
            h.wait_progress(threshold)
            sleep_random(h.rng, 0.0, 0.4)
            if not h.pending():
                log("fan-out finished before this outage")
                break
            down = down_s if down_s is not None else h.rng.uniform(2.0, 4.0)
            h.wait_in_flight()  # a request is out at the provider: its answer will find no database
            sending = h.observe_sending()
            progress = h.progress()
            if fast:
                terminated += lock_out(h.role, h.app_name, down)
                what = f"locked the service out for {down:.1f}s ({terminated} backends terminated)"
            else:
                restart_cluster(down)
                what = f"restarted the cluster (down {down:.1f}s)"
            done += 1
            log(f"{what} at {progress}/{n} accepted; {sending} deliveries were in 'sending'")
        extra = {"outages": done, "kind": "lockout" if fast else "restart", "seed": seed}
        if fast:
            extra["terminated"] = terminated
        result = h.finish(extra)
        if done < outages:
            result.problems.append(f"only {done} of {outages} outages happened during the fan-out")
        return result


def main(argv: list[str] | None = None) -> int:
    p = parser("postgres_restart", __doc__.splitlines()[0], FULL_N, FAST_N)
    p.add_argument("--outages", type=int, default=1, help="outages during the fan-out")
    p.add_argument("--down", type=float, default=None, help="seconds the database is away (default: random 2-4)")
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait for the end condition")
    args = p.parse_args(argv)
    n, seed = resolve(args, FULL_N, FAST_N)
    return report(run(n, args.fast, seed, args.outages, args.down, args.timeout))


if __name__ == "__main__":
    sys.exit(main())
