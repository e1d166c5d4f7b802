"""Shared benchmark plumbing: a private PostgreSQL schema, bulk subscribers, process memory from /proc."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from alerts.db import upgrade
from alerts.tokens import Purpose, Signer

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
