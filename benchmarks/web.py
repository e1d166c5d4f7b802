"""Web benchmark: the sign-up API and one-click unsubscribe under 100 concurrent clients on loopback.

The real app under uvicorn (2 worker processes per core) on PostgreSQL, rate limits in Redis, confirmations queued
on Redis. Prints requests/s, p50/p99 latency and the answers by status for each endpoint.

The load comes from wrk (Debian's ``wrk`` package; ``make bench`` installs it): a load generator in
Python (httpx) saturated a core at about 70 requests/s and measured itself instead of the server.
Lua scripts in ``benchmarks/wrk/`` make each request (a new address per sign-up, a different token per
click) and count the answers by status.

    python -m benchmarks.web --duration 30 --clients 100
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg

from benchmarks.support import REDIS_URL, SECRET, bulk_subscribers, pg_schema

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(url: str, port: int, signup_per_ip: str, workers: int) -> subprocess.Popen[bytes]:
    prefix = f"bench-web-{uuid.uuid4().hex[:6]}"
    env = os.environ | {
        "ALERTS_ENV": "test",
        "ALERTS_DATABASE_URL": url,
        "ALERTS_SECRET_KEY": SECRET,
        "ALERTS_BROKER_URL": f"{REDIS_URL}/0",
        "ALERTS_BROKER_PREFIX": prefix + ":",
        "ALERTS_REDIS_URL": f"{REDIS_URL}/1",
        "ALERTS_RATELIMIT_PREFIX": prefix,
        "ALERTS_SIGNUP_PER_IP": signup_per_ip,
        "ALERTS_BASE_URL": "https://alerts.example.org",
        "ALERTS_LOG_LEVEL": "WARNING",
    }
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "alerts.web.main:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--log-level",
        "warning",
        "--no-access-log",
        # X-Forwarded-For is trusted only from ALERTS_TRUSTED_PROXIES (the app), not uvicorn's loopback default.
        "--no-proxy-headers",
    ]
    server = subprocess.Popen(command, env=env, cwd=ROOT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.1)
    server.kill()
    raise RuntimeError("server did not start")


WRK_DIR = Path(__file__).resolve().parent / "wrk"


def wrk_load(
    base: str, script: str, args: list[str], clients: int, threads: int, duration_s: float, tmp: Path
) -> dict[str, Any]:
    """Run wrk with ``script`` (after the shared report.lua) and read back its JSON summary line."""
    combined = tmp / f"{script}.lua"
    combined.write_text((WRK_DIR / "report.lua").read_text() + "\n" + (WRK_DIR / f"{script}.lua").read_text())
    command = [
        "wrk",
        f"--threads={threads}",
        f"--connections={clients}",
        f"--duration={duration_s:g}s",
        "--timeout=30s",
        f"--script={combined}",
        base,
        "--",
        *args,
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    line = next((ln for ln in output.splitlines() if ln.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{output}")
    raw = json.loads(line.removeprefix("WRK_JSON "))
    elapsed = raw["duration_us"] / 1e6
    return {
        "requests": raw["requests"],
        "requests_per_s": round(raw["requests"] / elapsed, 1),
        "p50_ms": round(raw["p50_us"] / 1000, 1),
        "p99_ms": round(raw["p99_us"] / 1000, 1),
        "max_ms": round(raw["max_us"] / 1000, 1),
        "statuses": {int(k): v for k, v in raw["statuses"].items()},
        "transport_errors": {k: v for k, v in raw["errors"].items() if v},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per endpoint")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument(
        "--workers",
        type=int,
        default=2 * (os.cpu_count() or 1),
        help="uvicorn worker processes (default: 2 per core, as docs/operations.md recommends)",
    )
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (the load generator's)")
    parser.add_argument("--subscribers", type=int, default=200_000, help="existing subscribers (unsubscribe tokens)")
    parser.add_argument(
        "--signup-per-ip",
        default="100000/minute",
        help="per-IP limit during the run (all clients share 127.0.0.1); e.g. 20/hour to see 429s",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed (Debian package 'wrk'): make bench installs it")
    tmp = Path(tempfile.mkdtemp(prefix="alerts-web-bench-"))
    with pg_schema() as url:
        bulk_subscribers(url, args.subscribers, "trial", "NCT00124774", "NCT00124774")
        plain = url.replace("postgresql+psycopg://", "postgresql://")
        tokens = tmp / "tokens.txt"
        with psycopg.connect(plain) as conn, tokens.open("w") as out:
            for (token,) in conn.execute("SELECT unsubscribe_token FROM subscriptions ORDER BY id"):
                out.write(f"{token}\n")
        port = free_port()
        server = start_server(url, port, args.signup_per_ip, args.workers)
        try:
            base = f"http://127.0.0.1:{port}"
            load = functools.partial(
                wrk_load, base, clients=args.clients, threads=args.threads, duration_s=args.duration, tmp=tmp
            )
            results = {
                "signup": load("signup", [uuid.uuid4().hex[:8]]),
                "one_click_unsubscribe": load("one_click", [str(tokens), str(args.threads)]),
            }
        finally:
            server.terminate()
            server.wait(timeout=20)
    for name, r in results.items():
        other = {s: n for s, n in r["statuses"].items() if s not in (200, 202, 429)}
        unintended = sum(other.values()) + sum(r["transport_errors"].values())
        print(
            f"{name:22s} {r['requests_per_s']:8.1f} req/s  p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:7.1f} ms  "
            f"max {r['max_ms']:7.1f} ms  statuses {r['statuses']}  errors other than 429: {unintended}"
        )


if __name__ == "__main__":
    main()
