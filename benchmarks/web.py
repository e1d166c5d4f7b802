"""Web benchmark: the sign-up API and one-click unsubscribe under 100 concurrent clients on loopback.

The real app under uvicorn (2 worker processes) on PostgreSQL, rate limits in Redis, confirmations queued
on Redis. Prints requests/s, p50/p99 latency and the answers by status for each endpoint.

    python -m benchmarks.web --duration 30 --clients 100
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
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


async def load(base: str, make_request: Any, clients: int, duration_s: float) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    deadline = time.perf_counter() + duration_s
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:

        async def one_client() -> None:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    response = await make_request(client)
                    statuses[response.status_code] += 1
                except httpx.HTTPError as exc:
                    errors[type(exc).__name__] += 1
                    continue
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) >= 2 else [0.0] * 99
    return {
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(quantiles[49] * 1000, 1),
        "p99_ms": round(quantiles[98] * 1000, 1),
        "statuses": dict(statuses),
        "transport_errors": dict(errors),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per endpoint")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--subscribers", type=int, default=200_000, help="existing subscribers (unsubscribe tokens)")
    parser.add_argument(
        "--signup-per-ip",
        default="100000/minute",
        help="per-IP limit during the run (all clients share 127.0.0.1); e.g. 20/hour to see 429s",
    )
    args = parser.parse_args()
    with pg_schema() as url:
        bulk_subscribers(url, args.subscribers, "trial", "NCT00124774", "NCT00124774")
        plain = url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(plain) as conn:
            tokens = [row[0] for row in conn.execute("SELECT unsubscribe_token FROM subscriptions ORDER BY id")]
        port = free_port()
        server = start_server(url, port, args.signup_per_ip, args.workers)
        try:
            base = f"http://127.0.0.1:{port}"
            counter = itertools.count()
            run = uuid.uuid4().hex[:6]

            async def signup(client: httpx.AsyncClient) -> httpx.Response:
                n = next(counter)
                body = {"email": f"load{n}.{run}@bench.example.org", "condition": f"Condition {n % 50}"}
                return await client.post("/api/subscriptions", json=body)

            token_cycle = itertools.cycle(tokens)

            async def one_click(client: httpx.AsyncClient) -> httpx.Response:
                # As Gmail sends it (RFC 8058): form-encoded body, no cookies.
                return await client.post(
                    f"/unsubscribe/{next(token_cycle)}",
                    content=b"List-Unsubscribe=One-Click",
                    headers={"Content-Type": "application/x-www-form-urlencoded"},
                )

            results = {
                "signup": asyncio.run(load(base, signup, args.clients, args.duration)),
                "one_click_unsubscribe": asyncio.run(load(base, one_click, args.clients, args.duration)),
            }
        finally:
            server.terminate()
            server.wait(timeout=20)
    for name, r in results.items():
        other = {s: n for s, n in r["statuses"].items() if s not in (200, 202, 429)}
        unintended = sum(other.values()) + sum(r["transport_errors"].values())
        print(
            f"{name:22s} {r['requests_per_s']:8.1f} req/s  p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:7.1f} ms  "
            f"statuses {r['statuses']}  errors other than 429: {unintended}"
        )


if __name__ == "__main__":
    main()
