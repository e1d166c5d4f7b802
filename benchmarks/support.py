"""Shared benchmark plumbing: a private PostgreSQL schema, bulk subscribers, a real Celery worker (started,
measured, stopped), process memory and CPU from /proc."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from alerts.config import Settings, environment, load_settings
from alerts.db import upgrade
from alerts.tasks.app import ALL_QUEUES, worker_command
from alerts.tokens import Purpose, Signer
from tests.support.sendgrid_standin import StandInProcess
from tests.support.worker import wait_ready

ROOT = Path(__file__).resolve().parent.parent

PG_ADMIN = os.environ.get("ALERTS_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("ALERTS_BENCH_REDIS", "redis://127.0.0.1:6379")
SECRET = "benchmark-secret-key-0123456789abcdef"


@contextmanager
def pg_schema(keep: bool = False) -> Iterator[str]:
    """A fresh schema in the `test` database, migrated; dropped afterwards."""
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    url = PG_ADMIN.replace("postgresql://", "postgresql+psycopg://") + f"?options=-csearch_path%3D{schema}"
    upgrade(url)
    try:
        yield url
    finally:
        if not keep:
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA {schema} CASCADE")


def _plain(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def bulk_subscribers(
    url: str, n: int, kind: str, target: str, label: str, secret: str = SECRET, domain: str = "bench.example.org"
) -> None:
    """N active subscribers with one subscription each, loaded with COPY (not part of any timing).

    Tokens are signed exactly as sign-up signs them, so links in the emails are real.
    """
    signer = Signer(secret)
    with psycopg.connect(_plain(url)) as conn, conn.cursor() as cur:
        with cur.copy("COPY subscribers (id, email, email_hash, manage_token, created_at) FROM STDIN") as copy:
            for i in range(1, n + 1):
                copy.write_row(
                    (i, f"r{i}@{domain}", f"{i:064x}", signer.sign(Purpose.MANAGE, i), "2026-11-01T00:00:00Z")
                )
        with cur.copy(
            "COPY subscriptions (id, subscriber_id, kind, target, label, status, unsubscribe_token, created_at, "
            "confirmed_at) FROM STDIN"
        ) as copy:
            for i in range(1, n + 1):
                copy.write_row(
                    (
                        i,
                        i,
                        kind,
                        target,
                        label,
                        "active",
                        signer.sign(Purpose.UNSUBSCRIBE, i),
                        "2026-11-01T00:00:00Z",
                        "2026-11-01T00:00:00Z",
                    )
                )
        cur.execute("SELECT setval(pg_get_serial_sequence('subscribers', 'id'), %s)", (n,))
        cur.execute("SELECT setval(pg_get_serial_sequence('subscriptions', 'id'), %s)", (n,))
        cur.execute("ANALYZE subscribers; ANALYZE subscriptions")
        conn.commit()


def settle(url: str) -> None:
    """After loading, before timing: vacuum what the load left behind and write it out.

    A bulk UPDATE (placing every follower) leaves one dead row per live one, so autovacuum would start on
    that table during the timed run; and the load's dirty pages would be flushed by a checkpoint inside
    it. Both are the setup's cost, not the fan-out's: run to run, they moved the same commit's placed
    fan-out between 4.5 and 6.8 s.
    """
    with psycopg.connect(_plain(url), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        conn.execute("CHECKPOINT")


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (Linux /proc)."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            found.extend(process_tree(int(child)))
    return found


def rss_kib(pid: int, field: str = "VmHWM") -> int:
    """Peak (VmHWM) or current (VmRSS) resident memory of one process, as the kernel reports it."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far (Linux /proc; clock ticks as the kernel counts them)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    # After the command name: state is field 3, utime and stime are fields 14 and 15 (man 5 proc).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """Every process started by ``pid``, its children's children too (Linux /proc: a pass's lanes)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = list(Path(f"/proc/{parent}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found += children
            todo += children
    return found


def pids_named(name: str) -> list[int]:
    """Every process whose command name is ``name`` (e.g. the PostgreSQL server and its backends)."""
    found = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == name:
                found.append(int(comm.parent.name))
        except OSError:
            continue
    return found


class CpuMeter:
    """CPU seconds spent by groups of processes between start() and stop(), read from the kernel.

    Backends that exit in between are not counted (their time is gone with them); the benchmark's
    processes live through the measured window.
    """

    def __init__(self, groups: dict[str, Callable[[], list[int]]]) -> None:
        self.groups = groups
        self._start: dict[str, dict[int, float]] = {}

    def _read(self) -> dict[str, dict[int, float]]:
        return {name: {pid: cpu_seconds(pid) for pid in pids()} for name, pids in self.groups.items()}

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> dict[str, float]:
        now = self._read()
        return {
            name: round(sum(t - self._start[name].get(pid, 0.0) for pid, t in now[name].items()), 2)
            for name in self.groups
        }


def pss_kib(pid: int) -> int:
    """Proportional set size of one process now: its private pages plus its share of pages it shares
    (forked Celery pool processes share most of their parent's). Summed over processes, unlike RSS, it
    counts each page once."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


# --- a real Celery worker for the delivery benchmarks (fan-out, digests) --------------------------------


def bench_settings(url: str, standin_url: str, tmp: Path) -> Settings:
    """Settings of a benchmark run: its schema, Redis with a private prefix, the SendGrid stand-in."""
    return load_settings(
        env="test",
        database_url=url,
        broker_url=f"{REDIS_URL}/0",
        broker_prefix=f"bench-{uuid.uuid4().hex[:8]}:",
        email_backend="sendgrid",
        sendgrid_api_key="SG.benchmark",
        sendgrid_host=standin_url,
        secret_key=SECRET,
        base_url="https://alerts.example.org",
        from_email="alerts@alerts.example.org",
        outbox_dir=tmp / "outbox",
        log_format="json",
    )


def start_worker(
    settings: Settings,
    log_path: Path,
    app_module: str = "alerts.tasks.app",
    queues: str = ALL_QUEUES,
) -> subprocess.Popen[bytes]:
    """A real worker (prefork, its default concurrency), logging to ``log_path``, ready when this returns."""
    env = os.environ | environment(settings)
    command = worker_command(
        app_module=app_module,
        queues=queues,
        pool="prefork",
        standalone=True,
        hostname=f"bench-{uuid.uuid4().hex[:6]}@%h",
    )
    log = log_path.open("wb")
    worker = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    wait_ready(worker, log_path, timeout_s=60)
    return worker


def stop_worker(worker: subprocess.Popen[bytes]) -> tuple[dict[int, int], int]:
    """Peak resident memory of every process of the worker, and their proportional memory (PSS) summed,
    read from the kernel before they exit."""
    pids = process_tree(worker.pid)
    peaks = {pid: rss_kib(pid) for pid in pids}
    shared_once = sum(pss_kib(pid) for pid in pids)
    worker.terminate()
    try:
        worker.wait(timeout=30)
    except subprocess.TimeoutExpired:
        worker.kill()
    return peaks, shared_once


def delivery_meter(worker: subprocess.Popen[bytes], standin: StandInProcess) -> CpuMeter:
    """Where the two cores go during a delivery run: the worker's processes, PostgreSQL's, the stand-in's,
    Redis's. Started; ``stop()`` it when the last recipient was accepted."""
    assert standin.process is not None
    standin_pid = standin.process.pid
    meter = CpuMeter(
        {
            "worker": lambda: process_tree(worker.pid),
            "postgres": lambda: pids_named("postgres"),
            "standin": lambda: [standin_pid],
            "redis": lambda: pids_named("redis-server"),
        }
    )
    meter.start()
    return meter


def memory_figures(peaks: dict[int, int], pss: int) -> dict[str, Any]:
    """What ``stop_worker`` read, in MiB, as both delivery benchmarks report it."""
    return {
        "worker_peak_rss_mib": {str(pid): round(kib / 1024, 1) for pid, kib in peaks.items()},
        "worker_peak_rss_total_mib": round(sum(peaks.values()) / 1024, 1),
        "worker_pss_total_mib": round(pss / 1024, 1),
    }
