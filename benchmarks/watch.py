"""Watcher benchmark: one pass over N updated records served by the registry stand-in, real parts.

PostgreSQL (a private schema), Redis as the broker (a private key prefix; send tasks are queued, no worker
sends them: this measures the watcher), the registry stand-in over real HTTP in this process, and the pass
as a separate process, exactly as an operator runs it (``alerts watch``), at the production pace of one
request per second.

Setup (not timed): N variations of the 129 real fixture records (own NCT IDs and titles), stored as a
finished bootstrap would have left them (snapshots, content hashes, vocabulary), and S subscribers spread
over their trials (70%) and conditions (30%). Then the registry's next day: every record is updated - 60%
with a material change (status, enrollment, a site), 35% with noise only (NLM's ordering, verification
date), and 5% replaced by new trials first posted that day - and the pass runs.

    python -m benchmarks.watch --records 10000 --subscribers 1000 --kill

``--kill`` runs the same day again on a fresh schema, kills the pass (SIGKILL) once it has committed about
half of the records, runs it again (it resumes from the last committed page) and compares every total.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import redis

from alerts import ctgov, places, vocabulary
from alerts.config import Settings, environment, load_settings
from alerts.ctgov.client import WATCH_FIELDS
from alerts.ctgov.standin import PIECES, RegistryStandIn, project
from alerts.db import make_engine, transaction
from alerts.tokens import Purpose, Signer
from alerts.watch.records import RegistryRecord
from benchmarks.support import REDIS_URL, SECRET, cpu_seconds, descendants, pg_schema, pss_kib, rss_kib, settle

ROOT = Path(__file__).resolve().parent.parent
STUDIES = ROOT / "tests" / "fixtures" / "ctgov" / "studies"
DAY0 = "2026-11-27T09:00:00"
CONDITIONS = ("Depression", "Lumbar Disc Herniation", "Insomnia", "Type 2 Diabetes", "Liver Diseases", "Stroke")
STATUSES = ("RECRUITING", "ACTIVE_NOT_RECRUITING", "COMPLETED", "SUSPENDED", "TERMINATED")


def base_records() -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(STUDIES.glob("NCT*.json"))]


def variation(base: dict[str, Any], nct: str, i: int) -> dict[str, Any]:
    record = copy.deepcopy(base)
    ident = record["protocolSection"]["identificationModule"]
    ident["nctId"] = nct
    ident["briefTitle"] = f"{ident['briefTitle']} (site group {i})"
    return record


def material_edit(record: dict[str, Any], i: int) -> None:
    protocol = record["protocolSection"]
    kind = i % 3
    if kind == 0:
        status = protocol["statusModule"].get("overallStatus")
        protocol["statusModule"]["overallStatus"] = next(s for s in STATUSES[i % 5 :] + STATUSES if s != status)
    elif kind == 1:
        enrollment = protocol.setdefault("designModule", {}).setdefault("enrollmentInfo", {})
        enrollment["count"] = int(enrollment.get("count") or 0) + 10 + i % 7
    else:
        locations = protocol.setdefault("contactsLocationsModule", {}).setdefault("locations", [])
        locations.append({"facility": f"Clinic {i}", "city": "Lyon", "country": "France", "status": "RECRUITING"})


def noise_edit(record: dict[str, Any]) -> None:
    browse = record.setdefault("derivedSection", {}).setdefault("conditionBrowseModule", {})
    for key in ("meshes", "ancestors", "browseLeaves"):
        if isinstance(browse.get(key), list):
            browse[key] = list(reversed(browse[key]))
    record["protocolSection"]["statusModule"]["statusVerifiedDate"] = "2026-11"


def the_day(n: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(day-0 records, their day-1 edits, day-1 new trials): n records read by the measured pass."""
    bases = base_records()
    day0 = [variation(bases[i % len(bases)], f"NCT9{i:07d}", i) for i in range(n)]
    edited: list[dict[str, Any]] = []
    new: list[dict[str, Any]] = []
    for i, record in enumerate(day0):
        if i % 20 == 19:  # 5%: a new trial registered that day instead
            new.append(variation(bases[i % len(bases)], f"NCT8{i:07d}", i))
            continue
        changed = copy.deepcopy(record)
        (material_edit(changed, i) if i % 20 < 12 else noise_edit(changed))
        edited.append(changed)
    return day0, edited, new


def seed(url: str, day0: list[dict[str, Any]], subscribers: int) -> dict[str, int]:
    """The state a finished bootstrap leaves (snapshots, their sites, vocabulary, content hashes), written in
    bulk; then subscribers. Returns who follows what."""
    engine = make_engine(url)
    with transaction(engine) as session:
        for record in base_records():
            nct = record["protocolSection"]["identificationModule"]["nctId"]
            vocabulary.learn(session, nct, vocabulary.extract(record))
        targets = {c: vocabulary.resolve(session, c) for c in CONDITIONS}
    engine.dispose()
    paths = [PIECES[f.lower()] for f in WATCH_FIELDS]
    signer = Signer(SECRET)
    plain = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain) as conn, conn.cursor() as cur:
        with (
            cur.copy("COPY trials (nct_id, title, record, fingerprint, version_at, updated_at) FROM STDIN") as trials,
        ):
            for record in day0:
                stored = project(record, paths)
                trials.write_row(
                    (
                        ctgov.nct_id(stored),
                        ctgov.title(stored),
                        json.dumps(stored),
                        ctgov.fingerprint(stored),
                        DAY0 + "Z",
                        DAY0 + "Z",
                    )
                )
        with cur.copy("COPY trial_vocabulary (nct_id, learned, updated_at) FROM STDIN") as learned:
            for record in day0:
                state = vocabulary.extract(project(record, paths)).as_json()
                learned.write_row((ctgov.nct_id(record), json.dumps(state), DAY0 + "Z"))
        with cur.copy("COPY trial_sites (nct_id, seq, lat, lon, recruiting) FROM STDIN") as sites:
            for record in day0:
                for row in places.site_rows(project(record, paths)):
                    sites.write_row((ctgov.nct_id(record), *row))
        with cur.copy("COPY watch_records (nct_id, content_hash, last_update, seen_at) FROM STDIN") as hashes:
            for record in day0:
                facts = RegistryRecord.of(project(record, paths))
                hashes.write_row((facts.nct_id, facts.content_hash, facts.last_update, DAY0 + "Z"))
        cur.execute(
            "INSERT INTO watch_state (name, cursor, data_timestamp, pass_bootstrap, pass_counts) "
            "VALUES ('ctgov', %s, %s, false, '{}')",
            (DAY0[:10], DAY0),
        )
        followed = {"trial": 0, "condition": 0}
        with cur.copy("COPY subscribers (id, email, email_hash, manage_token, created_at) FROM STDIN") as people:
            for i in range(1, subscribers + 1):
                people.write_row(
                    (i, f"r{i}@bench.example.org", f"{i:064x}", signer.sign(Purpose.MANAGE, i), DAY0 + "Z")
                )
        columns = "id, subscriber_id, kind, target, label, status, unsubscribe_token, created_at, confirmed_at"
        with cur.copy(f"COPY subscriptions ({columns}) FROM STDIN") as subs:
            for i in range(1, subscribers + 1):
                if i % 10 < 7:  # 70% follow one trial, spread over all of them
                    nct = f"NCT9{(i * 7919) % len(day0):07d}"
                    kind, target, label = "trial", nct, nct
                else:
                    label = CONDITIONS[i % len(CONDITIONS)]
                    concept = targets[label]
                    kind, target = "condition", vocabulary.concept_target(concept) if concept else label.lower()
                followed[kind] += 1
                token = signer.sign(Purpose.UNSUBSCRIBE, i)
                subs.write_row((i, i, kind, target, label, "active", token, DAY0 + "Z", DAY0 + "Z"))
        cur.execute("SELECT setval(pg_get_serial_sequence('subscribers', 'id'), %s)", (subscribers,))
        cur.execute("SELECT setval(pg_get_serial_sequence('subscriptions', 'id'), %s)", (subscribers,))
        cur.execute("ANALYZE")
        conn.commit()
    return followed


def settings_for(
    url: str,
    registry: RegistryStandIn,
    prefix: str,
    page_size: int = 1000,
    rate_per_s: float = 1.0,
    lanes: int | None = None,
) -> Settings:
    return load_settings(
        env="test",
        database_url=url,
        broker_url=f"{REDIS_URL}/0",
        broker_prefix=prefix,
        secret_key=SECRET,
        base_url="https://alerts.example.org",
        from_email="alerts@alerts.example.org",
        ctgov_url=registry.url,
        ctgov_contact="benchmark@example.org",
        watch_page_size=page_size,
        ctgov_rate_per_s=rate_per_s,  # the registry's pace by default
        **({"watch_lanes": lanes} if lanes else {}),  # the service's default unless asked
        log_format="json",
    )


def _local_ports(pid: int) -> set[int]:
    """Local TCP ports of a process's sockets (Linux /proc): how its PostgreSQL backends are found."""
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                link = os.readlink(fd)
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    except OSError:
        return set()
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9 and parts[9] in inodes:
                ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports


def _backends(conn: psycopg.Connection[Any], pid: int) -> list[int]:
    """PIDs of the PostgreSQL backends serving process ``pid`` (matched by its client ports)."""
    ports = sorted(_local_ports(pid))
    if not ports:
        return []
    rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE client_port = ANY(%s)", (ports,)).fetchall()
    return [int(r[0]) for r in rows]


def run_pass(settings: Settings, log_path: Path, kill_at: int | None = None) -> dict[str, Any]:
    """``alerts watch`` in its own process: its wall seconds, the peak RSS (KiB) of the pass and of each of
    its lanes, whether it was killed, the CPU seconds of the pass with its lanes, and of the PostgreSQL
    backends serving them.

    Each peak is the process's VmHWM read from /proc while it runs (not the rusage of wait4: across the
    fork + exec that starts it, that carries this process's own size, the stand-in's 10,000 records).
    The lanes (``alerts.watch.lanes``) are found as the pass's descendants, the backends by the client
    ports of all their sockets, and read from /proc like them (last reading at most one poll before they
    exit). With ``kill_at``: SIGKILL to the pass once it has committed that many records (read from its
    state row); its lanes die with it.
    """
    alerts = Path(sys.executable).parent / "alerts"
    env = os.environ | environment(settings)
    plain = settings.database_url.replace("postgresql+psycopg://", "postgresql://")
    started = time.perf_counter()
    with log_path.open("ab") as log:
        child = subprocess.Popen([str(alerts), "watch"], env=env, stdout=log, stderr=log, cwd=ROOT)
    killed = False
    peaks: dict[int, int] = {}
    pss_peak = 0
    cpu: dict[int, float] = {}
    backend_cpu: dict[int, float] = {}
    polls = 0
    with psycopg.connect(plain, autocommit=True) as conn:
        while child.poll() is None:
            # All read from the kernel while they run (the last reading is at most one poll before they exit).
            family = [child.pid, *descendants(child.pid)]
            for pid in family:
                peaks[pid] = max(peaks.get(pid, 0), rss_kib(pid))
                cpu[pid] = max(cpu.get(pid, 0.0), cpu_seconds(pid))
            if polls % 4 == 0:
                pss_peak = max(pss_peak, sum(pss_kib(pid) for pid in family))
            if polls % 10 == 0:
                for pid in family:
                    for backend in _backends(conn, pid):
                        backend_cpu.setdefault(backend, 0.0)
            for backend in backend_cpu:
                backend_cpu[backend] = max(backend_cpu[backend], cpu_seconds(backend))
            polls += 1
            if kill_at:
                counts = conn.execute("SELECT pass_counts FROM watch_state WHERE name = 'ctgov'").fetchone()
                if counts and counts[0] and int(counts[0].get("read", 0)) >= kill_at:
                    child.send_signal(signal.SIGKILL)
                    child.wait()
                    killed = True
                    break
            time.sleep(0.05)
    lanes = [pid for pid in peaks if pid != child.pid and peaks[pid] > 0]
    return {
        "wall_s": time.perf_counter() - started,
        "peak_kib": peaks.get(child.pid, 0),
        "lane_peaks_kib": [peaks[pid] for pid in lanes],
        "pss_peak_kib": pss_peak,
        "killed": killed,
        "cpu_s": sum(cpu.values()),
        "postgres_cpu_s": sum(backend_cpu.values()),
    }


def totals(url: str) -> dict[str, Any]:
    plain = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain) as conn:
        events = {f"{t} {s}": n for t, s, n in conn.execute("SELECT type, status, count(*) FROM events GROUP BY 1, 2")}
        deliveries = conn.execute(
            "SELECT count(*), count(DISTINCT (dedupe_key, subscriber_id)) FROM deliveries"
        ).fetchone()
        recipients = conn.execute("SELECT count(DISTINCT subscriber_id) FROM deliveries").fetchone()[0]
        rejected = conn.execute("SELECT count(*) FROM rejected_events").fetchone()[0]
        last = conn.execute("SELECT last_pass, cursor FROM watch_state").fetchone()
    return {
        "events": dict(sorted(events.items())),
        "deliveries": deliveries[0],
        "distinct (news, subscriber)": deliveries[1],
        "subscribers reached": recipients,
        "rejected": rejected,
        "cursor": str(last[1]),
        "last pass": {k: last[0][k] for k in ("outcome", "resumed", "pages", "requests", "retries")},
        "last pass counts": last[0]["counts"],
    }


@contextmanager
def broker_prefix() -> Iterator[str]:
    prefix = f"bench-watch-{uuid.uuid4().hex[:8]}:"
    try:
        yield prefix
    finally:
        client = redis.Redis.from_url(f"{REDIS_URL}/0")
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)


def one_run(
    n: int,
    subscribers: int,
    kill: bool,
    log_dir: Path,
    page_size: int = 1000,
    rate_per_s: float = 1.0,
    lanes: int | None = None,
) -> dict[str, Any]:
    day0, edited, new = the_day(n)
    with pg_schema() as url, broker_prefix() as prefix, RegistryStandIn(day0, data_timestamp=DAY0) as registry:
        started = time.perf_counter()
        followed = seed(url, day0, subscribers)
        settle(url)
        setup_s = time.perf_counter() - started
        registry.advance_day(edited, new)
        settings = settings_for(url, registry, prefix, page_size, rate_per_s, lanes)
        log_path = log_dir / f"watch-{'kill' if kill else 'once'}-{uuid.uuid4().hex[:6]}.log"
        runs = []
        if kill:
            runs.append(run_pass(settings, log_path, kill_at=n // 2))
        runs.append(run_pass(settings, log_path))
        result = totals(url)
        result |= {
            "records": n,
            "subscribers": followed,
            "setup_s": round(setup_s, 1),
            "lanes": settings.watch_lanes,
            "wall_s": round(sum(r["wall_s"] for r in runs), 2),
            "records_per_s": round(n / sum(r["wall_s"] for r in runs)),
            # The pass's own process, then each of its processes (the pass, its lanes, multiprocessing's
            # resource tracker), and their sum: what the pass took of the machine at most.
            "peak_rss_mib": [round(r["peak_kib"] / 1024) for r in runs],
            "lane_peak_rss_mib": [[round(k / 1024) for k in r["lane_peaks_kib"]] for r in runs],
            "peak_rss_sum_mib": [round((r["peak_kib"] + sum(r["lane_peaks_kib"])) / 1024) for r in runs],
            # The same processes' memory with shared pages counted once (PSS, sampled every 0.2 s): the
            # lanes are forked from one server and share its modules, which each RSS above counts again.
            "peak_pss_sum_mib": [round(r["pss_peak_kib"] / 1024) for r in runs],
            "killed": [r["killed"] for r in runs],
            # CPU the pass and its lanes used (user + system): what the wall time would shrink towards with
            # one core per process on an idle machine, PostgreSQL's share aside.
            "pass_cpu_s": [round(r["cpu_s"], 1) for r in runs],
            "pass_cpu_ms_per_record": round(1000 * sum(r["cpu_s"] for r in runs) / n, 2),
            # CPU of the PostgreSQL backends serving the pass and its lanes (they wait on them).
            "postgres_cpu_s": [round(r["postgres_cpu_s"], 1) for r in runs],
            "postgres_cpu_ms_per_record": round(1000 * sum(r["postgres_cpu_s"] for r in runs) / n, 2),
            "requests to the stand-in": len(registry.requests),
            "log": str(log_path),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--kill", action="store_true", help="also run the kill-mid-pass variant and compare")
    parser.add_argument("--lanes", type=int, default=None, help="ALERTS_WATCH_LANES (default: the service's)")
    parser.add_argument("--log-dir", type=Path, default=ROOT / "var" / "bench")
    args = parser.parse_args()
    args.log_dir.mkdir(parents=True, exist_ok=True)
    print(
        f"{datetime.now(UTC).isoformat(timespec='seconds')} watch benchmark: {args.records} records, "
        f"{args.subscribers} subscribers, {os.cpu_count()} cores"
    )
    once = one_run(args.records, args.subscribers, False, args.log_dir, lanes=args.lanes)
    print(json.dumps(once, indent=2))
    if args.kill:
        killed = one_run(args.records, args.subscribers, True, args.log_dir, lanes=args.lanes)
        print(json.dumps(killed, indent=2))
        same = [
            k
            for k in (
                "events",
                "deliveries",
                "distinct (news, subscriber)",
                "subscribers reached",
                "rejected",
                "cursor",
            )
            if once[k] != killed[k]
        ]
        print("kill-mid-pass totals equal the uninterrupted run's" if not same else f"DIFFERENT: {same}")
        if same:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
