"""Web benchmark: the link pages, one-click unsubscribe and sign-ups under 100 concurrent clients on loopback.

The real app as deployed (``alerts web``: uvicorn with uvloop and httptools, 2 worker processes per core) on
PostgreSQL with 200,000 subscribers, rate limits in Redis, confirmations queued on Redis. The load comes from
wrk (Debian's ``wrk`` package; ``make bench`` installs it); Lua scripts in ``benchmarks/wrk/`` make each
request (a different link or token per request, a new address per sign-up) and count the answers by status.

``--scenario endpoints`` (default): 30 s of each of ``GET /healthz`` (the stack's floor), ``GET`` of the
confirm, unsubscribe and manage pages, the RFC 8058 one-click ``POST /unsubscribe/{token}`` and
``POST /api/subscriptions``; prints requests/s, p50/p99 and the ratio to ``/healthz`` measured in the same
run (the figure that travels between machines).

``--scenario scanner``: a mail scanner's burst: ``GET`` of every link in the emails of ``--deliveries`` sent
alerts (their unsubscribe and manage links, as ``alerts.sending.Links`` writes them) at full speed with
``--clients`` connections, while real people (``--people`` connections, each pausing ``--pause-ms`` between
requests; half of them click one-click unsubscribe links of other subscribers, half sign up) use the
service; prints each stream and the people's p99 during the burst.

    python -m benchmarks.web --duration 30 --clients 100
    python -m benchmarks.web --scenario scanner --duration 30 --clients 100
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis

from alerts.sending import Links
from alerts.tokens import Purpose, Signer
from benchmarks.support import REDIS_URL, SECRET, CpuMeter, bulk_subscribers, pg_schema, pids_named, process_tree

ROOT = Path(__file__).resolve().parent.parent
BASE_URL = "https://alerts.example.org"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(url: str, port: int, signup_per_ip: str, workers: int, prefix: str) -> subprocess.Popen[bytes]:
    env = os.environ | {
        "ALERTS_ENV": "test",
        "ALERTS_DATABASE_URL": url,
        "ALERTS_SECRET_KEY": SECRET,
        "ALERTS_BROKER_URL": f"{REDIS_URL}/0",
        "ALERTS_BROKER_PREFIX": prefix + ":",
        "ALERTS_REDIS_URL": f"{REDIS_URL}/1",
        "ALERTS_RATELIMIT_PREFIX": prefix,
        "ALERTS_SIGNUP_PER_IP": signup_per_ip,
        "ALERTS_BASE_URL": BASE_URL,
        "ALERTS_LOG_LEVEL": "WARNING",
    }
    # The documented deployment: `alerts web` (uvloop, httptools, no access log).
    alerts = str(Path(sys.executable).with_name("alerts"))
    command = [alerts, "web", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
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


def wrk_start(
    base: str, script: str, args: list[str], clients: int, threads: int, duration_s: float, tmp: Path
) -> subprocess.Popen[str]:
    """Start wrk with ``script`` after the shared files (report.lua: answers by status and the JSON summary line
    ``wrk_result`` reads; lines.lua: each thread's share of a file of paths or tokens)."""
    # One file per run (two wrk processes may start from the same script at once): wrk takes one script, and
    # concatenating needs no search path for dofile/require in wrk's Lua.
    combined = tmp / f"{script}-{uuid.uuid4().hex[:8]}.lua"
    parts = [(WRK_DIR / name).read_text() for name in ("report.lua", "lines.lua", f"{script}.lua")]
    combined.write_text("\n".join(parts))
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
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)


def wrk_result(process: subprocess.Popen[str]) -> dict[str, Any]:
    output, _ = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"wrk failed ({process.returncode}):\n{output}")
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


def wrk_load(
    base: str,
    script: str,
    args: list[str],
    clients: int,
    threads: int,
    duration_s: float,
    tmp: Path,
    meter: CpuMeter | None = None,
) -> dict[str, Any]:
    """One wrk run; with ``meter``, also the CPU microseconds per request of each group of processes."""
    if meter is not None:
        meter.start()
    result = wrk_result(wrk_start(base, script, args, clients, threads, duration_s, tmp))
    if meter is not None:
        spent = meter.stop()
        result["cpu_us"] = {name: round(s * 1e6 / max(1, result["requests"])) for name, s in spent.items()}
    return result


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def path(link: str) -> str:
    return link.removeprefix(BASE_URL)


def link_files(url: str, tmp: Path) -> dict[str, Path]:
    """Paths and tokens of every subscriber, as their emails carry them (``alerts.sending.Links``)."""
    plain = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain) as conn:
        rows = conn.execute(
            "SELECT s.id, s.unsubscribe_token, b.manage_token FROM subscriptions s "
            "JOIN subscribers b ON b.id = s.subscriber_id ORDER BY s.id"
        ).fetchall()
    links = Links(BASE_URL, "alerts.example.org")
    # Confirmation links are signed when sent and never stored: signed here, as the confirmation email does.
    signer = Signer(SECRET)
    return {
        "ids": write_lines(tmp / "ids.txt", [str(i) for i, _, _ in rows]),
        "tokens": write_lines(tmp / "tokens.txt", [t for _, t, _ in rows]),
        "unsubscribe": write_lines(
            tmp / "unsubscribe.txt", [links.unsubscribe(t).removeprefix(BASE_URL) for _, t, _ in rows]
        ),
        "manage": write_lines(tmp / "manage.txt", [links.manage(m).removeprefix(BASE_URL) for _, _, m in rows]),
        "confirm": write_lines(
            tmp / "confirm.txt",
            [links.confirm(signer.sign(Purpose.CONFIRM, i)).removeprefix(BASE_URL) for i, _, _ in rows],
        ),
    }


Load = Callable[..., dict[str, Any]]


ENDPOINTS = ("confirm", "unsubscribe", "manage", "one-click", "signup")


def endpoints(
    load: Load, files: dict[str, Path], threads: int, only: tuple[str, ...] = ENDPOINTS
) -> dict[str, dict[str, Any]]:
    """``/healthz`` (always: the ratios are to it), then each endpoint of ``only`` in the usual order."""
    health = write_lines(files["ids"].with_name("healthz.txt"), ["/healthz"] * threads)
    runs: dict[str, tuple[str, str, Callable[[], list[str]]]] = {
        "confirm": ("GET /confirm/{token}", "get_paths", lambda: [str(files["confirm"]), str(threads)]),
        "unsubscribe": ("GET /unsubscribe/{token}", "get_paths", lambda: [str(files["unsubscribe"]), str(threads)]),
        "manage": ("GET /manage/{token}", "get_paths", lambda: [str(files["manage"]), str(threads)]),
        "one-click": ("one-click POST /unsubscribe", "one_click", lambda: [str(files["tokens"]), str(threads)]),
        "signup": ("POST /api/subscriptions", "signup", lambda: [uuid.uuid4().hex[:8]]),
    }
    results = {"GET /healthz": load("get_paths", [str(health), str(threads)])}
    for key in ENDPOINTS:
        if key in only:
            name, script, args = runs[key]
            results[name] = load(script, args())
    return results


def scanner(base: str, files: dict[str, Path], args: argparse.Namespace, tmp: Path) -> dict[str, dict[str, Any]]:
    """The links of the first ``--deliveries`` subscribers' emails at full speed; real people beside them,
    clicking one-click unsubscribe links of other subscribers and signing up."""
    unsubscribe = files["unsubscribe"].read_text().splitlines()
    manage = files["manage"].read_text().splitlines()
    n = min(args.deliveries, len(unsubscribe) // 2)
    # Each email's links in the order a scanner opens them: the unsubscribe link, then the manage link.
    burst = write_lines(tmp / "burst.txt", [p for pair in zip(unsubscribe[:n], manage[:n], strict=True) for p in pair])
    people_tokens = write_lines(tmp / "people.txt", files["tokens"].read_text().splitlines()[n:])
    health = write_lines(tmp / "healthz.txt", ["/healthz"] * args.threads)
    healthz = wrk_load(
        base, "get_paths", [str(health), str(args.threads)], args.clients, args.threads, args.duration, tmp
    )
    scan = wrk_start(base, "get_paths", [str(burst), str(args.threads)], args.clients, args.threads, args.duration, tmp)
    tag = uuid.uuid4().hex[:8]
    people = {
        action: wrk_start(
            base,
            "real_users",
            [str(people_tokens), "1", str(args.pause_ms), tag, action],
            max(1, args.people // 2),
            1,
            args.duration,
            tmp,
        )
        for action in ("one-click", "signup")
    }
    return {
        "GET /healthz": healthz,
        "scanner GETs": wrk_result(scan),
        "people: one-click unsubscribes": wrk_result(people["one-click"]),
        "people: sign-ups": wrk_result(people["signup"]),
    }


def report(results: dict[str, dict[str, Any]]) -> None:
    floor = results["GET /healthz"]["requests_per_s"]
    for name, r in results.items():
        other = {s: n for s, n in r["statuses"].items() if s not in (200, 202, 429)}
        unintended = sum(other.values()) + sum(r["transport_errors"].values())
        cpu = r.get("cpu_us")
        print(
            f"{name:30s} {r['requests_per_s']:8.1f} req/s  {r['requests_per_s'] / floor:5.2f}x /healthz  "
            f"p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:7.1f} ms  max {r['max_ms']:7.1f} ms  "
            + (f"CPU/request: web {cpu['web']} us, postgres {cpu['postgres']} us  " if cpu else "")
            + f"statuses {r['statuses']}  errors other than 429: {unintended}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=["endpoints", "scanner"], default="endpoints")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per endpoint (or of the burst)")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument(
        "--workers",
        type=int,
        default=2 * (os.cpu_count() or 1),
        help="uvicorn worker processes (default: 2 per core, as docs/operations.md recommends)",
    )
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (the load generator's)")
    parser.add_argument("--subscribers", type=int, default=200_000, help="existing subscribers (their links)")
    parser.add_argument("--deliveries", type=int, default=100_000, help="scanner: sent emails whose links it opens")
    parser.add_argument("--people", type=int, default=10, help="scanner: connections of real people")
    parser.add_argument("--pause-ms", type=int, default=100, help="scanner: each person's pause between requests")
    parser.add_argument(
        "--only",
        default=",".join(ENDPOINTS),
        help="endpoints scenario: which of " + ", ".join(ENDPOINTS) + " to measure (comma-separated; /healthz always)",
    )
    parser.add_argument(
        "--signup-per-ip",
        default="100000/minute",
        help="per-IP limit during the run (all clients share 127.0.0.1); e.g. 20/hour to see 429s",
    )
    args = parser.parse_args()
    only = tuple(name.strip() for name in args.only.split(","))
    if set(only) - set(ENDPOINTS):
        raise SystemExit(f"--only: unknown endpoints {sorted(set(only) - set(ENDPOINTS))}")
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed (Debian package 'wrk'): make bench installs it")
    tmp = Path(tempfile.mkdtemp(prefix="alerts-web-bench-"))
    with pg_schema() as url:
        bulk_subscribers(url, args.subscribers, "trial", "NCT00124774", "NCT00124774")
        files = link_files(url, tmp)
        port = free_port()
        prefix = f"bench-web-{uuid.uuid4().hex[:6]}"
        server = start_server(url, port, args.signup_per_ip, args.workers, prefix)
        try:
            base = f"http://127.0.0.1:{port}"
            if args.scenario == "scanner":
                results = scanner(base, files, args, tmp)
            else:
                # CPU per request of the web processes and of PostgreSQL (all of its processes: on a shared
                # machine that includes other users' queries), the basis of the sizing rule.
                meter = CpuMeter({"web": lambda: process_tree(server.pid), "postgres": lambda: pids_named("postgres")})
                load = functools.partial(
                    wrk_load,
                    base,
                    clients=args.clients,
                    threads=args.threads,
                    duration_s=args.duration,
                    tmp=tmp,
                    meter=meter,
                )
                results = endpoints(load, files, args.threads, only)
        finally:
            server.terminate()
            server.wait(timeout=20)
            # The run's queued sign-up tasks and rate-limit lists (no worker runs here to take them).
            for db in (0, 1):
                client = redis.Redis.from_url(f"{REDIS_URL}/{db}")
                for key in client.scan_iter(f"{prefix}*"):
                    client.delete(key)
                client.close()
    print(
        f"{args.scenario}: {args.workers} uvicorn processes, {args.subscribers:,} subscribers, "
        f"{args.clients} connections, {args.duration:g} s"
        + (f", {args.people} people pausing {args.pause_ms} ms" if args.scenario == "scanner" else "")
    )
    report(results)


if __name__ == "__main__":
    main()
