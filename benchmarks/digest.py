"""Digest benchmark: N daily-digest subscribers, all due at once, one beat tick, real parts.

Setup (not timed): a private PostgreSQL schema; 200 pieces of news (100 trial changes, 100 new trials
from the fixture records), their fragments rendered once as intake renders them; N subscribers in a mix
of time zones, each holding a random 1-20 of the 200 items (``--identical``: every subscriber holds the
same 5), with the subscriptions those items came from; all loaded with COPY and streamed, so setup
memory stays flat at any N. Then the SendGrid stand-in (its own process, validating every request
against SendGrid's OpenAPI description) and a real Celery worker on Redis (prefork, concurrency 2).

Timed: from publishing ``alerts.digests.tick`` by task name (what beat does every minute) to the stand-in
accepting the last digest. Reported: wall time, digests/s, requests, how the digests were sent (shared by
identical digests / packed / alone), content characters handed to SendGrid, missing and duplicated
recipients (counted by the stand-in), peak RSS of each worker process, worker time by stage.

    python -m benchmarks.digest --n 100000
    python -m benchmarks.digest --n 100000 --identical
    python -m benchmarks.digest --n 100000 --identical --fanout   # and the immediate fan-out, same run
    python -m benchmarks.digest --n 5000 --pack-limit 0      # every digest as its own message, to compare
    python -m benchmarks.digest --n 1000000                  # flat memory (minutes of setup)
"""

from __future__ import annotations

import argparse
import ast
import json
import random
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from alerts import ctgov
from alerts.config import Settings
from alerts.db import make_engine, transaction
from alerts.digests import held
from alerts.rendering import Renderer
from alerts.tasks.app import create_app
from alerts.tokens import Purpose, Signer
from benchmarks import fanout
from benchmarks.support import (
    SECRET,
    bench_settings,
    delivery_meter,
    memory_figures,
    pg_schema,
    settle,
    start_worker,
    stop_worker,
)
from tests.support.sendgrid_standin import StandInProcess

ROOT = Path(__file__).resolve().parent.parent
STUDIES = ROOT / "tests" / "fixtures" / "ctgov" / "studies"
ZONES = [
    ("UTC", 8),
    ("Europe/Paris", 8),
    ("America/New_York", 7),
    ("Asia/Shanghai", 8),
    ("Pacific/Kiritimati", 8),
    ("America/St_Johns", 6),
    ("Asia/Kolkata", 9),
    ("Australia/Sydney", 8),
]
SITE = {"site_name": "Trial alerts", "base_url": "https://alerts.example.org"}


def _plain(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def news(url: str) -> list[dict[str, Any]]:
    """200 items: 100 changes (recruitment opens, enrollment moves) and 100 new trials, rendered once each."""
    records = [json.loads(p.read_text()) for p in sorted(STUDIES.glob("NCT*.json"))]
    renderer = Renderer()
    items: list[dict[str, Any]] = []
    engine = make_engine(url)
    with transaction(engine) as session:
        for i, old in enumerate(records[:100]):
            new = json.loads(json.dumps(old))
            status = new["protocolSection"].setdefault("statusModule", {})
            status["overallStatus"] = "RECRUITING" if status.get("overallStatus") != "RECRUITING" else "COMPLETED"
            design = new["protocolSection"].setdefault("designModule", {})
            design["enrollmentInfo"] = {"count": 100 + i, "type": "ESTIMATED"}
            nct = ctgov.nct_id(new)
            key = held.change_key(nct, ctgov.fingerprint(old), ctgov.fingerprint(new))
            held.store_versions(session, nct, [old, new])
            held.render_change(session, renderer, SITE, key, new, ctgov.diff(old, new))
            items.append({"key": key, "variant": None, "kind": "trial", "target": nct, "label": nct})
        labels: dict[str, str] = {}
        for record in records[29:129]:
            nct = ctgov.nct_id(record)
            key = f"new:{nct}"
            held.render_new(session, renderer, SITE, key, record)
            # Ten followed conditions, as a site's popular ones: the record's first, folded into ten groups.
            label = (ctgov.conditions(record) or ["Other conditions"])[0][:100]
            label = labels.setdefault(label, label) if len(labels) < 10 else list(labels)[len(items) % 10]
            held.render_group(session, renderer, SITE, label) if held.missing(
                session, [held.group_key(label)]
            ) else None
            items.append({"key": key, "variant": label, "kind": "condition", "target": f"c:{label}", "label": label})
    engine.dispose()
    return items


def holdings(n: int, items: list[dict[str, Any]], identical: bool, seed: int) -> Iterator[list[int]]:
    """Each subscriber's held items (indexes into ``items``), the same on every pass (seeded per subscriber)."""
    fixed = [0, 1, 2, 100, 101]  # 3 changes and 2 new trials
    for i in range(1, n + 1):
        if identical:
            yield fixed
        else:
            rng = random.Random(seed * 1_000_003 + i)
            yield rng.sample(range(len(items)), rng.randint(1, 20))


def load(url: str, n: int, items: list[dict[str, Any]], identical: bool, seed: int = 15) -> int:
    """Subscribers, their subscriptions and held items, streamed with COPY in two passes over the same seeded
    choices (so nothing grows with N). Returns the number of held items."""
    signer = Signer(SECRET)
    due = datetime.now(UTC) - timedelta(minutes=1)
    held_at = datetime.now(UTC) - timedelta(days=8)
    held_count = 0
    with psycopg.connect(_plain(url)) as conn, conn.cursor() as cur:
        with cur.copy(
            "COPY subscribers (id, email, email_hash, manage_token, created_at, time_zone, digest_hour, "
            "digest_weekday, digest_cadence, digest_due_at) FROM STDIN"
        ) as copy:
            for i in range(1, n + 1):
                zone, hour = ZONES[i % len(ZONES)]
                manage = signer.sign(Purpose.MANAGE, i)
                copy.write_row((i, f"r{i}@bench.example.org", f"{i:064x}", manage, due, zone, hour, 0, "daily", due))
        with cur.copy(
            "COPY subscriptions (id, subscriber_id, kind, target, label, status, unsubscribe_token, created_at, "
            "confirmed_at, frequency) FROM STDIN"
        ) as copy:
            subscription_id = 0
            for i, chosen in enumerate(holdings(n, items, identical, seed), start=1):
                for target in dict.fromkeys(items[k]["target"] for k in chosen):
                    subscription_id += 1
                    kind, label = ("trial", target) if not target.startswith("c:") else ("condition", target[2:])
                    token = signer.sign(Purpose.UNSUBSCRIBE, subscription_id)
                    copy.write_row((subscription_id, i, kind, target, label, "active", token, due, due, "daily"))
        with cur.copy(
            "COPY held_items (event_id, subscriber_id, subscription_id, dedupe_key, variant, created_at) FROM STDIN"
        ) as copy:
            subscription_id = 0
            for i, chosen in enumerate(holdings(n, items, identical, seed), start=1):
                own: dict[str, int] = {}
                for target in dict.fromkeys(items[k]["target"] for k in chosen):
                    subscription_id += 1
                    own[target] = subscription_id
                for k in chosen:
                    item = items[k]
                    copy.write_row((k + 1, i, own[item["target"]], item["key"], item["variant"], held_at))
                    held_count += 1
        for table in ("subscribers", "subscriptions"):
            cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
        cur.execute("ANALYZE subscribers; ANALYZE subscriptions; ANALYZE held_items")
        conn.commit()
    return held_count


def stages(log_path: Path) -> tuple[dict[str, float], dict[str, int]]:
    """Worker seconds by stage and the send counters, summed from the JSON log lines of every batch."""
    seconds: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for line in log_path.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == "digests.sent":
            for name, value in (entry.get("timings") or {}).items():
                seconds[name] += float(value)
            for name in ("sent", "empty", "shared_batches", "packed", "alone", "content_chars", "retry", "failed"):
                counts[name] += int(entry.get(name) or 0)
        elif entry.get("event") == "digests.tick":
            counts["tick_groups"] += int(entry.get("groups") or 0)
        elif entry.get("task") == "alerts.digests.send" and "succeeded in" in str(entry.get("event")):
            # The task's own result (digests that left entries out to fit the byte budget, and how many).
            try:
                result = ast.literal_eval(str(entry["event"]).split("s: ", 1)[1])
            except (ValueError, SyntaxError, IndexError):
                continue
            for name in ("shortened", "omitted"):
                counts[name] += int(result.get(name) or 0)
    return dict(seconds), dict(counts)


def tick_seconds(log_path: Path) -> list[float]:
    found = []
    for line in log_path.read_text(errors="replace").splitlines():
        if "alerts.digests.tick" in line and "succeeded in" in line:
            try:
                text = json.loads(line)["event"] if line.startswith("{") else line
                found.append(float(text.split("succeeded in ")[1].split("s:")[0]))
            except (ValueError, KeyError, IndexError):
                continue
    return found


def wait_done(standin: StandInProcess, url: str, n: int, timeout_s: float) -> tuple[float | None, float | None]:
    """(seconds to the first acceptance, to the n-th); gives up early once no digest is left to send."""
    started = time.perf_counter()
    first = None
    checked = started
    with psycopg.connect(_plain(url), autocommit=True) as conn:
        while time.perf_counter() - started < timeout_s:
            accepted = standin.stats()["recipients_accepted"]
            now = time.perf_counter() - started
            if accepted and first is None:
                first = now
            if accepted >= n:
                return first, now
            if first is not None and time.perf_counter() - checked > 2:
                checked = time.perf_counter()
                row = conn.execute("SELECT count(*) FROM digests WHERE status IN ('queued', 'sending')").fetchone()
                if row is not None and row[0] == 0 and standin.stats()["recipients_accepted"] < n:
                    return first, None  # everything is final and some digests were not accepted
            time.sleep(0.005 if first is None else 0.02)
    return first, None


def run(n: int, identical: bool, pack_limit: int | None, tmp: Path, timeout_s: float) -> dict[str, Any]:
    with pg_schema() as url, StandInProcess(args=["--no-record-bodies", "--no-record-custom-args"]) as standin:
        items = news(url)
        started = time.perf_counter()
        held_count = load(url, n, items, identical)
        settle(url)
        setup_s = time.perf_counter() - started
        settings: Settings = bench_settings(url, standin.url, tmp)
        if pack_limit is not None:
            settings = settings.model_copy(update={"digest_pack_limit_bytes": pack_limit})
        log_path = tmp / f"digest-worker-{n}-{uuid.uuid4().hex[:6]}.log"
        worker = start_worker(settings, log_path)
        try:
            producer = create_app(settings)
            meter = delivery_meter(worker, standin)
            published = time.perf_counter()
            producer.send_task("alerts.digests.tick", queue="maintenance")
            producer.send_task("alerts.digests.tick", queue="maintenance")  # a duplicated beat tick
            first, last = wait_done(standin, url, n, timeout_s)
            wall = time.perf_counter() - published if last is not None else None
            cpu = meter.stop()
            time.sleep(1.5)  # anything sent twice would show up now
            stats = standin.stats()
        finally:
            peaks, pss = stop_worker(worker)
    seconds, counts = stages(log_path)
    return {
        "n": n,
        "identical": identical,
        "held_items": held_count,
        "setup_s": round(setup_s, 1),
        "wall_s": wall,
        "digests_per_s": n / wall if wall else None,
        "first_acceptance_s": first,
        "requests": stats["requests_total"],
        "missing": n - stats["distinct_recipients"],
        "duplicated": stats["recipients_with_duplicates"],
        "sends": counts,
        "tick_task_s": tick_seconds(log_path),
        **memory_figures(peaks, pss),
        "stages_s": {k: round(v, 3) for k, v in sorted(seconds.items())},
        "cpu_s": cpu,
        "log": str(log_path),
    }


def compare(digests: dict[str, Any], alerts: dict[str, Any]) -> str:
    """One line: the digests' wall time beside the immediate fan-out's of the same N, in the same run."""
    fan_wall, wall = alerts["wall_s"], digests["wall_s"]
    if not fan_wall or not wall:
        return f"         immediate fan-out, same run: wall={fan_wall} s (a timeout: no ratio)"
    return (
        f"         immediate fan-out of N={alerts['n']:,}, same run: wall={fan_wall:.2f}s  "
        f"requests={alerts['requests']}  missing={alerts['missing']}  duplicated={alerts['duplicated']}  "
        f"digests / fan-out = {wall / fan_wall:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[100_000], help="subscribers (several: one run each)")
    parser.add_argument("--identical", action="store_true", help="every subscriber holds the same 5 items")
    parser.add_argument("--pack-limit", type=int, default=None, help="ALERTS_DIGEST_PACK_LIMIT_BYTES for the run")
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument(
        "--fanout",
        action="store_true",
        help="also run the immediate fan-out of the same N (benchmarks.fanout) in this run, and compare",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="alerts-digest-bench-"))
    results = [run(n, args.identical, args.pack_limit, tmp, args.timeout) for n in args.n]
    # The yardstick for identical digests is the speed immediate alerts reach: measured here, one
    # after the other on the same machine and load, not copied from an older run.
    immediate = {n: fanout.run_batched(n, tmp, args.timeout) for n in args.n} if args.fanout else {}
    if args.json:
        print(json.dumps({"digests": results, "fanout": list(immediate.values())}, indent=2))
    for r in results:
        kind = "identical (5 items each)" if r["identical"] else "random (1-20 of 200 items)"
        wall = f"{r['wall_s']:.2f}s" if r["wall_s"] else "timeout"
        rate = f"{r['digests_per_s']:,.0f} digests/s" if r["digests_per_s"] else ""
        print(
            f"\ndigests  N={r['n']:,} {kind}  held items={r['held_items']:,}  wall={wall}  {rate}  "
            f"first={r['first_acceptance_s']}  requests={r['requests']}  missing={r['missing']}  "
            f"duplicated={r['duplicated']}  worker peak RSS={r['worker_peak_rss_total_mib']} MiB "
            f"(per process {r['worker_peak_rss_mib']}; PSS {r['worker_pss_total_mib']} MiB)"
        )
        print(f"         sends: {r['sends']}  tick task: {r['tick_task_s']} s  setup: {r['setup_s']} s")
        print(f"         stages (worker seconds, both processes): {r['stages_s']}")
        print(f"         CPU seconds from tick to last acceptance: {r['cpu_s']}")
        alerts = immediate.get(r["n"])
        if alerts is not None:
            print(compare(r, alerts))
    print(f"\nlogs in {tmp}")


if __name__ == "__main__":
    main()
