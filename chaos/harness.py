"""What every chaos scenario shares: real services, real processes, and one honest count at the end.

A `Harness` sets up, for one run:

* a private PostgreSQL schema in the `test` database (`benchmarks.support.pg_schema`), migrated, with N active
  subscribers r1..rN@bench.example.org following one condition (`bulk_subscribers`, COPY);
* a unique Celery key prefix on Redis (`ALERTS_BROKER_PREFIX`), so runs never see each other's queues;
* the SendGrid stand-in as a separate process (`StandInProcess`) counting emails per recipient;
* real Celery worker processes (prefork) and a real beat process (maintenance every 2 s), all with short
  recovery settings (`RECOVERY_ENV`, `FAST_RECOVERY_ENV` with --fast), each in its own session so that a
  whole process tree can be killed;
* the event: `trial.new_for_condition` for NCT00124774 ("Herniated Disc"), which every subscriber matches.

`finish()` waits for the end condition (the stand-in has accepted N distinct recipients, no delivery is
`queued` or `sending`, no request is in flight at the stand-in), then counts per recipient at the stand-in and
explains every extra email it can: an extra email is *ambiguous* (allowed, reported separately) only when the
delivery records that the provider may have accepted an earlier try (`ambiguous_retries`, a timeout) or when
the scenario itself interrupted that delivery mid-send (`interrupted`, e.g. kill -9 while its request was out).
Anything else is *duplicated*, and the scenario fails.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import redis
from celery import Celery

from alerts.tasks.app import worker_command
from benchmarks.support import SECRET, bulk_subscribers, pg_schema, process_tree
from tests.support.sendgrid_standin import StandInProcess

REPO = Path(__file__).resolve().parents[1]
RUNS_DIR = REPO / "var" / "chaos"
STUDY = REPO / "tests" / "fixtures" / "ctgov" / "studies" / "NCT00124774.json"
CONDITION_KEY, CONDITION_LABEL = "herniated disc", "Herniated Disc"
DOMAIN = "bench.example.org"
API_KEY = "SG.chaos-api-key"
INGEST_TOKEN = "chaos-ingest-token-0123456789"
REDIS_URL = os.environ.get("ALERTS_CHAOS_REDIS", "redis://127.0.0.1:6379")
PG_ADMIN = os.environ.get("ALERTS_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")

# Recovery in seconds instead of minutes (production: lease 120 s, stale 900 s, maintenance every 60 s).
RECOVERY_ENV = {
    "ALERTS_SEND_LEASE_S": "10",
    "ALERTS_STALE_QUEUED_S": "5",
    "ALERTS_MAINTENANCE_INTERVAL_S": "2",
    "ALERTS_SEND_RETRY_BASE_S": "0.5",
    "ALERTS_SENDGRID_TIMEOUT_S": "2",
}
# The fast variants (make test) wait less: a batch of <= 200 takes well under a second here. The lease must
# stay above twice the client timeout (the transport stops starting requests at half the lease).
FAST_RECOVERY_ENV = RECOVERY_ENV | {"ALERTS_SEND_LEASE_S": "6", "ALERTS_STALE_QUEUED_S": "3"}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


# --------------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------------


class Proc:
    """A child process in its own session (so its whole tree can be signalled), output to a log file."""

    def __init__(self, name: str, command: Sequence[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.command = list(command)
        self.env = env
        self.log_path = log_path
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def start(self) -> Proc:
        with self.log_path.open("ab") as out:
            self.popen = subprocess.Popen(
                self.command, env=self.env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def wait_for_log(self, marker: bytes, timeout_s: float = 60.0, offset: int = 0) -> None:
        deadline = time.monotonic() + timeout_s
        while marker not in self.log_path.read_bytes()[offset:]:
            if not self.running() or time.monotonic() > deadline:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{self.name} did not log {marker!r}:\n{tail}")
            time.sleep(0.1)

    def tree(self) -> list[int]:
        return process_tree(self.pid) if self.running() else []

    def kill_tree(self) -> list[int]:
        """SIGKILL the process and all its descendants at once (its process group); returns their pids."""
        pids = self.tree()
        with suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        for pid in pids:  # anything that left the group
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert self.popen is not None
        self.popen.wait()
        self._wait_gone(pids)
        return pids

    def kill_children(self) -> list[int]:
        """SIGKILL only the descendants (the prefork pool processes); the parent lives on."""
        pids = self.tree()[1:]
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._wait_gone(pids)
        return pids

    @staticmethod
    def _wait_gone(pids: Sequence[int], timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.02)

    def terminate(self, group: bool = False) -> None:
        """SIGTERM to the main process, as ``docker stop`` does (Celery: warm shutdown); does not wait.

        ``group``: to every process of the group at once, as systemd's default ``KillMode=control-group`` does.
        """
        if self.popen is not None and self.popen.poll() is None:
            with suppress(ProcessLookupError):
                if group:
                    os.killpg(self.pid, signal.SIGTERM)
                else:
                    os.kill(self.pid, signal.SIGTERM)

    def stop(self, timeout_s: float = 20.0, group: bool = False) -> None:
        if self.popen is None:
            return
        self.terminate(group)
        with suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout_s)
        if self.popen.poll() is None or any(alive(p) for p in process_tree(self.pid)):
            with suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self.popen.wait()


class Worker:
    """One Celery worker (prefork) that can be killed and started again; each generation logs to its own file."""

    def __init__(self, harness: Harness, index: int, concurrency: int) -> None:
        self.harness = harness
        self.index = index
        self.concurrency = concurrency
        self.generation = 0
        self.proc: Proc | None = None

    def start(self) -> Worker:
        h = self.harness
        self.generation += 1
        tag = f"w{self.index}g{self.generation}"
        command = worker_command(
            concurrency=self.concurrency, pool="prefork", standalone=True, hostname=f"chaos-{h.run_id}-{tag}@%h"
        )
        self.proc = Proc(f"worker {tag}", command, h.env(worker=True), h.run_dir / f"worker-{tag}.log").start()
        self.proc.wait_for_log(b"ready.", timeout_s=60)
        return self

    def wait_for_log(self, marker: bytes, timeout_s: float = 60.0) -> None:
        assert self.proc is not None
        self.proc.wait_for_log(marker, timeout_s)

    def kill_tree(self) -> list[int]:
        assert self.proc is not None
        return self.proc.kill_tree()

    def kill_children(self) -> list[int]:
        assert self.proc is not None
        return self.proc.kill_children()

    def stop(self, group: bool = False) -> None:
        if self.proc is not None:
            self.proc.stop(group=group)


class RedisServer:
    """A private redis-server without persistence (``--save "" --appendonly no``) on a free port.

    ``restart()`` kills it (SIGKILL: nothing is written anywhere) and starts a new, empty one on the same port.
    """

    def __init__(self, run_dir: Path) -> None:
        self.port = free_port()
        self.run_dir = run_dir
        self.proc: Proc | None = None
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> RedisServer:
        command = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(self.run_dir),
        ]
        self.proc = Proc("redis", command, dict(os.environ), self.run_dir / "redis.log").start()
        deadline = time.monotonic() + 10
        while True:
            try:
                client = redis.Redis(port=self.port, socket_timeout=1)
                client.ping()
                client.close()
                return self
            except redis.RedisError:
                if not self.proc.running() or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start:\n{self.proc.log_path.read_text()}") from None
                time.sleep(0.05)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill_tree()

    def restart(self, down_s: float = 0.0) -> None:
        self.kill()
        time.sleep(down_s)
        self.start()
        self.restarts += 1

    def stop(self, group: bool = False) -> None:
        if self.proc is not None:
            self.proc.stop(group=group)


# --------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------


@dataclass
class Result:
    scenario: str
    n: int
    distinct: int = 0
    missing: int = 0
    unexpected: int = 0  # addresses at the stand-in that are not r1..rN
    duplicated: int = 0  # recipients with more emails than any recorded ambiguity explains
    ambiguous_dups: int = 0  # recipients with an extra email explained by an ambiguous acceptance
    ambiguous_timeouts: int = 0  # requests the stand-in accepted after the client had timed out
    ambiguous_retries: int = 0  # deliveries the service flagged as retried after a timeout
    interrupted: int = 0  # deliveries caught mid-send by the scenario's own fault (kill, outage)
    statuses: dict[str, int] = field(default_factory=dict)
    settled: bool = False
    wall_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    duplicated_examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def check(self) -> Result:
        """The guarantees every scenario shares; scenarios add their own problems before or after."""
        if not self.settled:
            self.problems.append("did not settle (queued/sending deliveries left, or recipients missing)")
        if self.missing:
            self.problems.append(f"{self.missing} recipients never got their email")
        if self.duplicated:
            self.problems.append(
                f"{self.duplicated} recipients got an unexplained extra email, e.g. {self.duplicated_examples[:5]}"
            )
        if self.unexpected:
            self.problems.append(f"{self.unexpected} unexpected addresses at the stand-in")
        not_sent = {s: c for s, c in self.statuses.items() if s != "sent"}
        if not_sent:
            self.problems.append(f"deliveries not sent: {not_sent}")
        return self

    def line(self) -> str:
        figures = [
            f"n={self.n}",
            f"missing={self.missing}",
            f"duplicated={self.duplicated}",
            f"ambiguous_timeouts={self.ambiguous_timeouts}",
            f"ambiguous_dups={self.ambiguous_dups}",
        ]
        figures += [f"{k}={v}" for k, v in self.extra.items()]
        figures.append(f"wall={self.wall_s:.1f}s")
        status = "ok" if self.ok else "FAILED"
        return f"{self.scenario}: " + " ".join(figures) + f" {status}"


# --------------------------------------------------------------------------------------------------
# The harness
# --------------------------------------------------------------------------------------------------


@dataclass
class Options:
    scenario: str
    n: int
    fast: bool
    seed: int
    batch_size: int = 1000
    concurrency: int = 2
    broker_url: str = f"{REDIS_URL}/0"
    standin_args: list[str] = field(default_factory=list)
    settle_timeout_s: float = 300.0
    # Service processes log in as a role of their own (privileges on this run's schema only), so a scenario
    # can lock exactly them out of the shared cluster (ALTER ROLE ... NOLOGIN) without touching anyone else.
    db_role: bool = False
    env: dict[str, str] = field(default_factory=dict)  # extra ALERTS_* overrides


class Harness:
    def __init__(self, options: Options) -> None:
        self.o = options
        self.rng = random.Random(options.seed)
        self.run_id = uuid.uuid4().hex[:8]
        self.run_dir = RUNS_DIR / f"{options.scenario}-{time.strftime('%Y%m%d-%H%M%S')}-{self.run_id}"
        self.broker_prefix = f"chaos-{options.scenario}-{self.run_id}:"
        self.app_name = f"chaos-{self.run_id}"
        self.broker_url = options.broker_url
        self.interrupted: Counter[int] = Counter()  # subscriber id -> claims caught mid-send by our faults
        self._claims: set[tuple[int, int]] = set()
        self.observed: set[int] = set()  # subscriber ids in 'sending' right before a fault (diagnosis only)
        self.forced_timeouts = 0  # stand-in timeouts injected with fail_next (counted apart by the stand-in)
        self.workers: list[Worker] = []
        self.procs: list[Proc] = []
        self._stack = ExitStack()
        self._producer: Celery | None = None
        self.started = time.monotonic()
        self.db_url = ""
        self.standin: StandInProcess

    # -- lifecycle ---------------------------------------------------------------------------------

    def __enter__(self) -> Harness:
        try:
            self._setup()
        except BaseException:
            self._stack.close()
            raise
        return self

    def _setup(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        log(f"{self.o.scenario}: run {self.run_id} n={self.o.n} seed={self.o.seed} logs in {self.run_dir}")
        self.db_url = self._stack.enter_context(pg_schema())
        bulk_subscribers(self.db_url, self.o.n, "condition", CONDITION_KEY, CONDITION_LABEL, domain=DOMAIN)
        if self.o.db_role:
            self._create_role()
        args = ["--api-key", API_KEY, "--no-record-bodies", "--no-record-custom-args", "--seed", str(self.o.seed)]
        self.standin = StandInProcess([*args, *self.o.standin_args]).start()
        # Undone in reverse: processes stop first (beat would publish again), then the broker keys go.
        self._stack.callback(self._clean_broker)
        self._stack.callback(self.standin.stop)
        self._stack.callback(self._stop_processes)

    @property
    def role(self) -> str:
        return f"chaos_{self.run_id}"

    def _create_role(self) -> None:
        schema = self.db_url.rsplit("%3D", 1)[1]
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {self.role} LOGIN")
            self._stack.callback(self._drop_role)
            conn.execute(f"GRANT USAGE ON SCHEMA {schema} TO {self.role}")
            conn.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA {schema} TO {self.role}")
            conn.execute(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA {schema} TO {self.role}")

    def _drop_role(self) -> None:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f"ALTER ROLE {self.role} LOGIN")
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (self.role,))
            conn.execute(f"DROP OWNED BY {self.role}")
            conn.execute(f"DROP ROLE {self.role}")

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _stop_processes(self) -> None:
        procs = [w.proc for w in self.workers if w.proc is not None] + self.procs
        for p in procs:
            p.terminate()
        for p in procs:
            p.stop()
        if self._producer is not None:
            self._producer.close()

    def _clean_broker(self) -> None:
        try:
            client = redis.Redis.from_url(self.broker_url, socket_timeout=5)
            keys = list(client.scan_iter(match=self.broker_prefix + "*", count=1000))
            if keys:
                client.delete(*keys)
            client.close()
        except redis.RedisError:
            pass

    # -- configuration -----------------------------------------------------------------------------

    def env(self, worker: bool = False) -> dict[str, str]:
        """The environment of our service processes: ALERTS_* only from here, nothing from the caller's."""
        db_url = self.db_url
        if worker:  # so a scenario can find (and terminate) exactly the service's database connections
            db_url += f"&application_name={self.app_name}"
        if self.o.db_role:
            db_url = db_url.replace("://postgres@", f"://{self.role}@", 1)
        values = {
            "ALERTS_ENV": "test",
            "ALERTS_DATABASE_URL": db_url,
            "ALERTS_BROKER_URL": self.broker_url,
            "ALERTS_BROKER_PREFIX": self.broker_prefix,
            "ALERTS_EMAIL_BACKEND": "sendgrid",
            "ALERTS_SENDGRID_API_KEY": API_KEY,
            "ALERTS_SENDGRID_HOST": self.standin.url,
            "ALERTS_SECRET_KEY": SECRET,
            "ALERTS_BASE_URL": "https://alerts.example.org",
            "ALERTS_FROM_EMAIL": "alerts@alerts.example.org",
            "ALERTS_OUTBOX_DIR": str(self.run_dir / "outbox"),
            "ALERTS_BROKER_DIR": str(self.run_dir / "broker"),
            "ALERTS_INGEST_TOKEN": INGEST_TOKEN,
            "ALERTS_BATCH_SIZE": str(self.o.batch_size),
            "ALERTS_LOG_FORMAT": "json",
            **(FAST_RECOVERY_ENV if self.o.fast else RECOVERY_ENV),
            **self.o.env,
        }
        base = {k: v for k, v in os.environ.items() if not k.startswith("ALERTS_")}
        return base | values

    # -- processes ---------------------------------------------------------------------------------

    def start_worker(self, concurrency: int | None = None) -> Worker:
        worker = Worker(self, len(self.workers), concurrency or self.o.concurrency)
        self.workers.append(worker)
        return worker.start()

    def start_services(self, workers: int = 1) -> list[Worker]:
        """Beat and ``workers`` workers, started side by side; returns the workers once all are ready."""
        beat = self.start_beat(wait=False)
        started = [self.start_worker() for _ in range(workers)]
        beat.wait_for_log(b"beat: Starting", timeout_s=30)
        return started

    def start_beat(self, wait: bool = True) -> Proc:
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "alerts.tasks.app",
            "beat",
            "--loglevel",
            "INFO",
            "--schedule",
            str(self.run_dir / "beat-schedule"),
        ]
        beat = Proc("beat", command, self.env(), self.run_dir / "beat.log").start()
        self.procs.append(beat)
        if wait:
            beat.wait_for_log(b"beat: Starting", timeout_s=30)
        return beat

    def start_web(self) -> tuple[Proc, str]:
        port = free_port()
        command = [sys.executable, "-m", "uvicorn", "alerts.web.main:app", "--host", "127.0.0.1", "--port", str(port)]
        web = Proc("web", command, self.env(), self.run_dir / "web.log").start()
        self.procs.append(web)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=2):
                    break
            except (OSError, urllib.error.URLError):
                if not web.running() or time.monotonic() > deadline:
                    raise RuntimeError(f"web did not start:\n{web.log_path.read_text()[-3000:]}") from None
                time.sleep(0.1)
        return web, url

    # -- events ------------------------------------------------------------------------------------

    @staticmethod
    def event(event_id: str | None = "chaos-new-NCT00124774") -> dict[str, Any]:
        payload: dict[str, Any] = {
            "type": "trial.new_for_condition",
            "condition": CONDITION_LABEL,
            "occurred_at": "2026-11-20T10:00:00Z",
            "trial": json.loads(STUDY.read_text()),
        }
        if event_id is not None:
            payload["event_id"] = event_id
        return payload

    def producer(self) -> Celery:
        """A plain Celery producer, as docs/events.md tells any producer to publish (task name, queue)."""
        if self._producer is None:
            self._producer = producer_app(self.broker_url, self.broker_prefix)
        return self._producer

    def publish(self, event: dict[str, Any] | None = None) -> None:
        self.producer().send_task("alerts.events.new_trial_for_condition", args=[event or self.event()], queue="events")

    # -- the database, read from here --------------------------------------------------------------

    @contextmanager
    def db(self) -> Iterator[psycopg.Connection[Any]]:
        url = self.db_url.replace("postgresql+psycopg://", "postgresql://") + "&application_name=chaos-harness"
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
            yield conn

    def statuses(self) -> dict[str, int] | None:
        """Deliveries by status, or None while the database cannot be reached."""
        try:
            with self.db() as conn:
                rows = conn.execute("SELECT status, count(*) FROM deliveries GROUP BY status").fetchall()
        except psycopg.OperationalError:
            return None
        return {str(s): int(c) for s, c in rows}

    def mark_interrupted(self, since: datetime | None = None) -> int:
        """Deliveries in `sending` now were caught mid-send by our fault: their fate at the provider is unknown.

        A claim is (delivery, attempt number): one still unfinished at the next fault is counted once.
        ``since``: only rows claimed before this moment (a surviving parent may already be claiming new ones).
        Returns the number of claims newly caught.
        """
        query = "SELECT subscriber_id, attempts FROM deliveries WHERE status = 'sending'"
        params: tuple[Any, ...] = ()
        if since is not None:
            query += " AND updated_at <= %s"
            params = (since,)
        with self.db() as conn:
            claims = {(int(s), int(a)) for s, a in conn.execute(query, params).fetchall() if s is not None}
        new = claims - self._claims
        self._claims |= new
        self.interrupted.update(s for s, _ in new)
        return len(new)

    def observe_sending(self) -> int:
        """Remember which deliveries are in `sending` right before a fault, for the report only (no allowance)."""
        with self.db() as conn:
            ids = {int(r[0]) for r in conn.execute("SELECT subscriber_id FROM deliveries WHERE status = 'sending'")}
        self.observed |= ids
        return len(ids)

    def wait_in_flight(self, timeout_s: float = 10.0) -> bool:
        """Until a mail-send request is being answered at the stand-in (so a fault now catches one mid-send)."""
        deadline = time.monotonic() + timeout_s
        while self.standin.stats()["in_flight"] == 0:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def progress(self) -> int:
        """Distinct recipients the stand-in has accepted so far."""
        return int(self.standin.stats()["distinct_recipients"])

    def wait_progress(self, fraction: float, timeout_s: float = 120.0) -> bool:
        target = int(self.o.n * fraction)
        deadline = time.monotonic() + timeout_s
        while self.progress() < target:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def wait_deliveries(self, timeout_s: float = 60.0) -> bool:
        """Until the event's deliveries exist (its transaction committed); False if they did not appear."""
        deadline = time.monotonic() + timeout_s
        while sum((self.statuses() or {}).values()) < self.o.n:
            if time.monotonic() > deadline:
                log(f"the event's deliveries did not appear within {timeout_s:.0f}s")
                return False
            time.sleep(0.05)
        return True

    def broker_backlog(self) -> int:
        """Messages waiting on the broker's queues plus those delivered but not yet acknowledged."""
        try:
            client = redis.Redis.from_url(self.broker_url, socket_timeout=5)
            total = sum(int(client.llen(self.broker_prefix + q)) for q in ("events", "deliveries", "maintenance"))
            total += int(client.hlen(self.broker_prefix + "unacked"))
            client.close()
            return total
        except redis.RedisError:
            return -1

    def unacked_messages(self) -> int | None:
        """Messages Redis holds as delivered-but-not-acknowledged (they come back after the visibility timeout)."""
        try:
            client = redis.Redis.from_url(self.broker_url, socket_timeout=5)
            count = int(client.hlen(self.broker_prefix + "unacked"))
            client.close()
            return count
        except redis.RedisError:
            return None

    # -- the end -----------------------------------------------------------------------------------

    def settle(self, timeout_s: float | None = None) -> bool:
        """Wait until N distinct recipients are accepted, nothing is queued/sending and nothing is in flight.

        Returns early (False) when nothing is left to do but recipients are still missing.
        """
        timeout_s = self.o.settle_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        idle_since: float | None = None
        while time.monotonic() < deadline:
            stats = self.standin.stats()
            statuses = self.statuses()
            pending = None if statuses is None else statuses.get("queued", 0) + statuses.get("sending", 0)
            idle = pending == 0 and stats["in_flight"] == 0
            if idle and stats["distinct_recipients"] >= self.o.n:
                # A request the client gave up on may still be sleeping at the stand-in: let it finish.
                time.sleep(1.0)
                if self.standin.stats()["in_flight"] == 0 and self._pending() == 0:
                    return True
                continue
            if idle and statuses:
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since > 15:
                    return False
            else:
                idle_since = None
            time.sleep(0.25)
        return False

    def _pending(self) -> int | None:
        statuses = self.statuses()
        return None if statuses is None else statuses.get("queued", 0) + statuses.get("sending", 0)

    def pending(self) -> bool:
        """Whether the fan-out still has work: deliveries queued or sending (True while the database is away)."""
        return self._pending() != 0

    def finish(self, extra: dict[str, Any] | None = None, timeout_s: float | None = None) -> Result:
        settled = self.settle(timeout_s)
        stats = self.standin.stats(recipients=True)
        result = Result(self.o.scenario, self.o.n, settled=settled, extra=dict(extra or {}))
        result.wall_s = time.monotonic() - self.started
        counts: dict[str, int] = stats["recipients"]
        expected = {f"r{i}@{DOMAIN}" for i in range(1, self.o.n + 1)}
        result.distinct = len(counts)
        result.missing = len(expected - counts.keys())
        result.unexpected = len(counts.keys() - expected)
        result.ambiguous_timeouts = int(stats["faults_injected"].get("timeout", 0)) + self.forced_timeouts
        with self.db() as conn:
            rows = conn.execute("SELECT subscriber_id, ambiguous_retries FROM deliveries").fetchall()
            result.statuses = dict(conn.execute("SELECT status, count(*) FROM deliveries GROUP BY status").fetchall())
        flagged = {int(s): int(a) for s, a in rows if s is not None}
        result.ambiguous_retries = sum(1 for a in flagged.values() if a)
        result.interrupted = len(self.interrupted)
        for address, count in counts.items():
            if count <= 1 or address not in expected:
                continue
            subscriber = int(address.split("@")[0][1:])
            allowance = flagged.get(subscriber, 0) + self.interrupted.get(subscriber, 0)
            if count - 1 <= allowance:
                result.ambiguous_dups += 1
            else:
                result.duplicated += 1
                result.duplicated_examples.append(
                    f"{address} x{count} (ambiguous_retries={flagged.get(subscriber, 0)}, "
                    f"interrupted={self.interrupted.get(subscriber, 0)}, "
                    f"sending_before_fault={subscriber in self.observed})"
                )
        summary = {k: v for k, v in stats.items() if k not in ("recipients", "config")}
        (self.run_dir / "standin-stats.json").write_text(json.dumps(summary, indent=2))
        return result.check()


def producer_app(broker_url: str, prefix: str) -> Celery:
    app = Celery("chaos-producer", broker=broker_url)
    app.conf.update(
        broker_transport_options={"global_keyprefix": prefix},
        broker_connection_retry_on_startup=True,
        task_serializer="json",
    )
    return app


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def parser(name: str, description: str, n: int, fast_n: int) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m chaos.{name}", description=description)
    p.add_argument("--n", type=int, default=None, help=f"recipients (default {n}, or {fast_n} with --fast)")
    p.add_argument("--fast", action="store_true", help="the small variant `make test` runs")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random, printed)")
    return p


def resolve(args: argparse.Namespace, n: int, fast_n: int) -> tuple[int, int]:
    count = args.n if args.n is not None else (fast_n if args.fast else n)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1_000_000)
    return count, seed


def report(result: Result) -> int:
    for problem in result.problems:
        log(f"PROBLEM: {problem}")
    print(result.line(), flush=True)
    return 0 if result.ok else 1


def sleep_random(rng: random.Random, low: float, high: float) -> float:
    delay = rng.uniform(low, high)
    time.sleep(delay)
    return delay


def now() -> datetime:
    return datetime.now(UTC)
