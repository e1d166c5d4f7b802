"""Fan-out benchmark: N followers of one condition, one trial.new_for_condition event, real parts.

PostgreSQL (bulk-loaded subscribers, not timed), the SendGrid stand-in in its own process (validating
every request against SendGrid's OpenAPI description), and a real Celery worker on Redis (prefork,
concurrency 2). Wall time runs from publishing the event to the stand-in accepting the last recipient.

    python -m benchmarks.fanout --n 100000 --naive-n 1000
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from alerts import places, vocabulary
from alerts.conditions import condition_key
from alerts.config import Settings
from alerts.db import make_engine, transaction
from alerts.tasks.app import create_app
from benchmarks.support import (
    bench_settings,
    bulk_subscribers,
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
TRIAL = "NCT00124774"  # condition "Herniated Disc", filed by NLM under Intervertebral Disc Displacement
CONDITION = "Herniated Disc"
QUIET_TRIAL = "NCT02782117"  # Amblyopia: nobody follows it


def record(nct_id: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((STUDIES / f"{nct_id}.json").read_text())
    return data


def recruiting(data: dict[str, Any]) -> dict[str, Any]:
    data["protocolSection"]["statusModule"]["overallStatus"] = "RECRUITING"
    for site in data["protocolSection"]["contactsLocationsModule"]["locations"]:
        site["status"] = "RECRUITING"
    return data


def prepare_vocabulary(url: str) -> str:
    """The vocabulary a running service has learned: every fixture record. Returns the followed target.

    A condition subscription follows its phrase (its condition key), which means Intervertebral Disc
    Displacement here: the event's trial matches both by its words and by its concept."""
    engine = make_engine(url)
    with transaction(engine) as session:
        for path in sorted(STUDIES.glob("NCT*.json")):
            data = json.loads(path.read_text())
            nct = data["protocolSection"]["identificationModule"]["nctId"]
            vocabulary.learn(session, nct, vocabulary.extract(data))
        assert vocabulary.resolve(session, CONDITION) is not None
    engine.dispose()
    return condition_key(CONDITION)


def wait_accepted(standin: StandInProcess, n: int, timeout_s: float) -> tuple[float | None, float | None]:
    """(seconds to first acceptance, seconds to the n-th), from now."""
    started = time.perf_counter()
    first = None
    while time.perf_counter() - started < timeout_s:
        accepted = standin.stats()["recipients_accepted"]
        now = time.perf_counter() - started
        if accepted and first is None:
            first = now
        if accepted >= n:
            return first, now
        time.sleep(0.005 if first is None else 0.02)
    return first, None


def stages(log_path: Path) -> dict[str, float]:
    """Worker time by stage, summed from the JSON log lines of the event and every batch."""
    total: dict[str, float] = defaultdict(float)
    for line in log_path.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") in ("event.accepted", "batch.sent"):
            for name, value in (entry.get("timings") or {}).items():
                total[name] += float(value)
    return dict(total)


def task_seconds(log_path: Path, task: str) -> list[float]:
    found = []
    for line in log_path.read_text(errors="replace").splitlines():
        if task in line and "succeeded in" in line:
            try:
                text = json.loads(line)["event"] if line.startswith("{") else line
                found.append(float(text.split("succeeded in ")[1].split("s:")[0]))
            except (ValueError, KeyError, IndexError):
                continue
    return found


def place_everyone(url: str, radius_km: float = 250.0) -> int:
    """Give every follower a city within ``radius_km`` of the trial's site and a distance that reaches it.

    The cities are the gazetteer's within that radius (one per follower, round robin), the distances 250 or
    500 km: everyone still gets the email, but through the distance filter, and each city's nearest-site
    outcome is its own rendering. Returns the number of cities.
    """
    site = next(s for s in places.sites(record(TRIAL)) if s.lat is not None)
    assert site.lat is not None and site.lon is not None
    gazetteer = places.gazetteer()
    chosen = [p for p in gazetteer.cities() if places.great_circle_km(p.lat, p.lon, site.lat, site.lon) <= radius_km]
    engine = make_engine(url)
    with transaction(engine) as session:
        for place in chosen:
            places.remember_city(session, place)
    engine.dispose()
    values = ",".join(f"({i}, {p.id})" for i, p in enumerate(chosen))
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        with conn.cursor() as cur:
            cur.execute(
                f"UPDATE subscribers SET city_id = c.city_id, distance_unit = 'km', "
                f"distance_km = CASE WHEN subscribers.id % 2 = 0 THEN 250 ELSE 500 END "
                f"FROM (VALUES {values}) AS c(idx, city_id) WHERE subscribers.id % {len(chosen)} = c.idx"
            )
            cur.execute("ANALYZE subscribers; ANALYZE cities")
        conn.commit()
    return len(chosen)


@contextmanager
def followers(n: int, tmp: Path, placed: bool = False) -> Iterator[tuple[StandInProcess, str, Settings]]:
    """A private schema with N followers of CONDITION and a running stand-in: (stand-in, target, settings).

    ``placed``: every follower also has a city and a distance (``place_everyone``).
    """
    with pg_schema() as url, StandInProcess(args=["--no-record-bodies", "--no-record-custom-args"]) as standin:
        target = prepare_vocabulary(url)
        bulk_subscribers(url, n, "condition", target, CONDITION)
        if placed:
            place_everyone(url)
        settle(url)
        yield standin, target, bench_settings(url, standin.url, tmp)


def delivery_figures(n: int, wall: float | None, first: float | None, stats: dict[str, Any]) -> dict[str, Any]:
    """What both designs report: wall time from publish, emails/s, and the stand-in's count of recipients."""
    return {
        "n": n,
        "wall_s": wall,
        "emails_per_s": n / wall if wall else None,
        "first_acceptance_s": first,
        "requests": stats["requests_total"],
        "missing": n - stats["distinct_recipients"],
        "duplicated": stats["recipients_with_duplicates"],
    }


def run_batched(n: int, tmp: Path, timeout_s: float, placed: bool = False) -> dict[str, Any]:
    with followers(n, tmp, placed) as (standin, _target, settings):
        log_path = tmp / f"worker-{n}{'-placed' if placed else ''}.log"
        worker = start_worker(settings, log_path)
        try:
            producer = create_app(settings)
            event = {
                "type": "trial.new_for_condition",
                "event_id": f"bench-{uuid.uuid4().hex}",
                "condition": CONDITION,
                "occurred_at": "2026-11-25T06:00:00Z",
                # Placed followers: a recruiting trial, so every email names the reader's nearest open site.
                "trial": recruiting(record(TRIAL)) if placed else record(TRIAL),
            }
            meter = delivery_meter(worker, standin)
            published = time.perf_counter()
            producer.send_task("alerts.events.new_trial_for_condition", args=[event])
            first, last = wait_accepted(standin, n, timeout_s)
            wall = time.perf_counter() - published if last is not None else None
            cpu = meter.stop()
            time.sleep(1.0)  # anything sent twice would show up now
            stats = standin.stats()
            # An event nobody follows: its worker time (the task's own runtime, as Celery reports it).
            quiet = {
                "type": "trial.new_for_condition",
                "event_id": f"quiet-{uuid.uuid4().hex}",
                "condition": "Amblyopia",
                "occurred_at": "2026-11-25T06:00:00Z",
                "trial": record(QUIET_TRIAL),
            }
            for i in range(5):
                # One at a time: sent together, events of one trial queue on its row lock, and that wait
                # would be counted as the cost of the event.
                producer.send_task("alerts.events.new_trial_for_condition", args=[quiet | {"event_id": f"q{i}-{n}"}])
                time.sleep(0.5)
            time.sleep(1.0)
        finally:
            peaks, pss = stop_worker(worker)
    quiet_times = task_seconds(log_path, "alerts.events.new_trial_for_condition")[1:]
    return delivery_figures(n, wall, first, stats) | {
        "placed": placed,
        **memory_figures(peaks, pss),
        "stages_s": {k: round(v, 3) for k, v in sorted(stages(log_path).items())},
        "cpu_s": cpu,
        "no_match_event_ms": [round(t * 1000, 1) for t in quiet_times],
        "log": str(log_path),
    }


def run_naive(n: int, tmp: Path, timeout_s: float) -> dict[str, Any]:
    with followers(n, tmp) as (standin, target, settings):
        log_path = tmp / f"naive-{n}.log"
        worker = start_worker(settings, log_path, app_module="benchmarks.naive", queues="naive")
        try:
            from benchmarks import naive

            naive.app.conf.broker_url = settings.broker_url
            naive.app.conf.broker_transport_options = {"global_keyprefix": settings.broker_prefix}
            event = {"type": "trial.new_for_condition", "condition": CONDITION, "trial": record(TRIAL)}
            published = time.perf_counter()
            naive.app.send_task("naive.fanout", args=[event, target], queue="naive")
            first, last = wait_accepted(standin, n, timeout_s)
            wall = time.perf_counter() - published if last is not None else None
            stats = standin.stats()
        finally:
            peaks, _ = stop_worker(worker)
    return delivery_figures(n, wall, first, stats) | {"worker_peak_rss_total_mib": round(sum(peaks.values()) / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[100_000], help="recipients (several: one run each)")
    parser.add_argument("--naive", action="store_true", help="also run the naive design in the same run")
    parser.add_argument(
        "--placed", action="store_true", help="also run each N with every follower placed (a city and a distance)"
    )
    parser.add_argument("--naive-n", type=int, default=1000, help="recipients for the naive run")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="alerts-bench-"))
    results = [run_batched(n, tmp, args.timeout) for n in args.n]
    if args.placed:
        results += [run_batched(n, tmp, args.timeout, placed=True) for n in args.n]
    naive = run_naive(args.naive_n, tmp, args.timeout) if args.naive else None
    if args.json:
        print(json.dumps({"batched": results, "naive": naive}, indent=2))
    for r in results:
        print(
            f"\nbatched{' placed' if r['placed'] else ''}  N={r['n']:,}  wall={r['wall_s']:.2f}s  "
            f"{r['emails_per_s']:,.0f} emails/s  "
            f"first={r['first_acceptance_s']:.2f}s  requests={r['requests']}  missing={r['missing']}  "
            f"duplicated={r['duplicated']}  worker peak RSS={r['worker_peak_rss_total_mib']} MiB "
            f"(per process {r['worker_peak_rss_mib']}; PSS at the end, shared pages once: "
            f"{r['worker_pss_total_mib']} MiB)"
        )
        print(f"         stages (worker seconds, summed over both processes): {r['stages_s']}")
        print(f"         CPU seconds from publish to last acceptance, by process group: {r['cpu_s']}")
        print(f"         event matching nobody: {r['no_match_event_ms']} ms of task time")
    if naive:
        print(
            f"\nnaive    N={naive['n']:,}  wall={naive['wall_s']:.2f}s  {naive['emails_per_s']:,.0f} emails/s  "
            f"requests={naive['requests']}  missing={naive['missing']}  duplicated={naive['duplicated']}"
        )
        if results and results[0]["emails_per_s"] and naive["emails_per_s"]:
            print(f"         batched / naive: {results[0]['emails_per_s'] / naive['emails_per_s']:.0f}x")
    print(f"\nlogs in {tmp}")


if __name__ == "__main__":
    main()
