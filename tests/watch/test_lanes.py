"""Lanes: a pass's chunks applied by spawned processes side by side (PostgreSQL), with the outcome of one process.

Real parts: the lanes are real processes (``spawn``) with their own connections to this run's schema; the
registry stand-in answers over real HTTP. Each lane sends through ``inline_lane`` (below), so what the
lanes sent is read back from the database (the deliveries' status), not from a transport in this process.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text

from alerts.ctgov.standin import RegistryStandIn
from alerts.db import transaction
from alerts.models import Delivery, DeliveryStatus, Event, Subscriber, WatchState
from alerts.runtime import Runtime, set_runtime
from alerts.transports.memory import MemoryTransport
from alerts.vocabulary import LEARNING_LOCK, serialize_learning
from alerts.watch.passes import _parts, run_pass
from tests.conftest import InlineEnqueue, _truncate, make_settings
from tests.watch.conftest import fast_client
from tests.watch.test_passes import Killed, _a_day_of_edits, _followers


def inline_lane(runtime: Runtime) -> InlineEnqueue:
    """A lane's queue: sends at once, in the lane (importable by name: the lanes are spawned)."""
    return InlineEnqueue(runtime)


@pytest.fixture
def pg(pg_schema_url: str, tmp_path: Path) -> Iterator[Runtime]:
    rt = Runtime(make_settings(pg_schema_url, tmp_path))
    rt.transport = MemoryTransport()
    _truncate(rt.engine)
    set_runtime(rt)
    yield rt
    set_runtime(None)
    rt.engine.dispose()


def _sent(runtime: Runtime) -> dict[str, int]:
    """Deliveries sent per address, as the lanes' sending left them in the database."""
    with transaction(runtime.engine) as session:
        rows = session.execute(
            select(Subscriber.email, func.count())
            .join(Delivery, Delivery.subscriber_id == Subscriber.id)
            .where(Delivery.status == DeliveryStatus.SENT.value)
            .group_by(Subscriber.email)
        )
        return {str(e): int(n) for e, n in rows}


def test_lanes_send_exactly_what_one_process_sends(pg: Runtime, registry: RegistryStandIn) -> None:
    _followers(pg)
    run_pass(pg, InlineEnqueue(pg), client_factory=fast_client(registry))  # the bootstrap: in this process
    _a_day_of_edits(registry)
    pg.settings.watch_commit_every = 1  # a chunk per record: the lanes commit them in any order
    report = run_pass(pg, InlineEnqueue(pg), client_factory=fast_client(registry), lanes=2, lane_enqueue=inline_lane)
    assert report.outcome == "finished" and not report.bootstrap
    assert report.counts["read"] == 3 and report.counts["no_op"] == 1
    assert report.counts["published:trial.changed"] == 2 and report.counts["published:trial.new_for_condition"] == 1
    assert _sent(pg) == {"changes@example.org": 1, "nash@example.org": 1, "fatty@example.org": 1}
    with transaction(pg.engine) as session:
        state = session.get(WatchState, "ctgov")
        assert state is not None and state.pass_started_at is None and state.pass_counts == {}
    # The same day again, forced: nothing new, nothing sent twice.
    again = run_pass(
        pg, InlineEnqueue(pg), client_factory=fast_client(registry), since=registry.today, lanes=2,
        lane_enqueue=inline_lane,
    )  # fmt: skip
    assert again.counts == {"read": 3, "unchanged": 3}
    assert _sent(pg) == {"changes@example.org": 1, "nash@example.org": 1, "fatty@example.org": 1}


def test_a_resumed_pass_skips_what_it_already_committed(pg: Runtime, registry: RegistryStandIn) -> None:
    """A lanes pass keeps its place per page (its first record): resumed there, the records its chunks
    committed are skipped by their done markers, neither published nor counted again."""
    _followers(pg)
    run_pass(pg, InlineEnqueue(pg), client_factory=fast_client(registry))
    _a_day_of_edits(registry)
    pg.settings.watch_commit_every = 1

    class DiesAfterFirstCommit(InlineEnqueue):
        def send_batch(self, event_id: int, after_id: int, upto_id: int) -> None:
            raise Killed

    with pytest.raises(Killed):
        run_pass(pg, DiesAfterFirstCommit(pg), client_factory=fast_client(registry))
    with transaction(pg.engine) as session:
        state = session.get(WatchState, "ctgov")
        assert state is not None and state.pass_page_offset == 2 and state.pass_counts["read"] == 2
        state.pass_page_offset = 0  # where a lanes pass would have kept its place: the page's start
    resumed = run_pass(pg, InlineEnqueue(pg), client_factory=fast_client(registry), lanes=2, lane_enqueue=inline_lane)
    assert resumed.resumed and resumed.counts["read"] == 3 and "unchanged" not in resumed.counts
    with transaction(pg.engine) as session:
        assert session.scalar(select(func.count()).select_from(Event)) == 3


def test_chunks_of_new_trials_come_apart_from_changes_in_page_order() -> None:
    def record(nct: str, first_posted: str) -> dict[str, Any]:
        status = {"studyFirstPostDateStruct": {"date": first_posted}}
        return {"protocolSection": {"identificationModule": {"nctId": nct}, "statusModule": status}}

    window = date(2026, 11, 27)
    studies = [
        record("NCT00000001", "2020-01-01"),
        record("NCT00000002", "2026-11-28"),
        record("NCT00000003", "2019-05"),
        {"broken": True},  # no date at all: not a new trial
        record("NCT00000005", "2026-11-27"),
    ]
    parts = list(_parts(4, studies, window, 2, offset=10))
    assert [(p.page, p.span, p.fresh) for p in parts] == [
        (4, "11-15", True),
        (4, "10-13", False),
        (4, "13-14", False),
    ]
    assert [len(p.studies) for p in parts] == [2, 2, 1]
    assert parts[0].studies[0] is studies[1] and parts[2].studies[0] is studies[3]
    # Without a window (a pass over everything), nothing is new.
    assert all(not p.fresh for p in _parts(1, studies, None, 10, offset=0))


def test_learning_is_one_transaction_at_a_time(pg: Runtime) -> None:
    try_lock = text("SELECT pg_try_advisory_xact_lock(hashtext(current_schema()), :key)")
    with transaction(pg.engine) as learner:
        serialize_learning(learner)
        serialize_learning(learner)  # again in the same transaction: at once
        with transaction(pg.engine) as other:
            assert other.scalar(try_lock, {"key": LEARNING_LOCK}) is False
    with transaction(pg.engine) as other:
        assert other.scalar(try_lock, {"key": LEARNING_LOCK}) is True


def test_lanes_are_for_postgresql_only(runtime: Runtime) -> None:
    from alerts.watch.passes import Watcher

    watcher = Watcher(runtime, InlineEnqueue(runtime), lanes=4, lane_enqueue=inline_lane)
    assert watcher.lanes == (4 if runtime.engine.dialect.name == "postgresql" else 1)
    assert Watcher(runtime, InlineEnqueue(runtime), lanes=4).lanes == 1  # no queue a lane could build


_HOLDS_LANES = """
import sys, time
from alerts.config import load_settings
from alerts.watch.lanes import Lanes
from tests.watch.test_lanes import inline_lane

settings = load_settings(env="test", database_url=sys.argv[1], secret_key="x" * 40, email_backend="memory")
lanes = Lanes(settings, 2, inline_lane)
while len(lanes.pids()) < 2:
    time.sleep(0.05)
print(*lanes.pids(), flush=True)
time.sleep(60)
"""


def test_lanes_end_with_a_killed_pass(pg_schema_url: str) -> None:
    """A pass killed with SIGKILL (a worker's OOM kill, ``kill -9``) leaves no lane behind to commit."""
    import signal
    import subprocess
    import sys
    import time

    root = Path(__file__).resolve().parents[2]
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDS_LANES, pg_schema_url], stdout=subprocess.PIPE, text=True, cwd=root
    )
    try:
        assert holder.stdout is not None
        pids = [int(p) for p in holder.stdout.readline().split()]
        assert len(pids) == 2
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        deadline = time.monotonic() + 5
        alive = pids
        while alive and time.monotonic() < deadline:
            time.sleep(0.05)
            alive = [p for p in pids if _running(p)]
        assert alive == []
    finally:
        holder.kill()


def _running(pid: int) -> bool:
    """Alive and not a zombie (a lane's parent is the fork server, which reaps it when it exits too)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def broken_lane(runtime: Runtime) -> InlineEnqueue:
    """A lane that cannot start (its broker is unreachable, say)."""
    raise RuntimeError("no broker")


def test_lanes_that_cannot_start_fail_the_pass_and_lose_nothing(pg: Runtime, registry: RegistryStandIn) -> None:
    from concurrent.futures.process import BrokenProcessPool

    _followers(pg)
    run_pass(pg, InlineEnqueue(pg), client_factory=fast_client(registry))
    _a_day_of_edits(registry)
    with pytest.raises(BrokenProcessPool):
        run_pass(pg, InlineEnqueue(pg), client_factory=fast_client(registry), lanes=2, lane_enqueue=broken_lane)
    with transaction(pg.engine) as session:
        state = session.get(WatchState, "ctgov")
        assert state is not None and state.pass_started_at is not None  # the pass is to be resumed
        assert state.last_pass is not None and state.last_pass["outcome"] == "failed"
        assert "BrokenProcessPool" in str(state.last_error)
        assert session.scalar(select(func.count()).select_from(Event)) == 0
    resumed = run_pass(pg, InlineEnqueue(pg), client_factory=fast_client(registry), lanes=2, lane_enqueue=inline_lane)
    assert resumed.resumed and resumed.counts["read"] == 3
    assert _sent(pg) == {"changes@example.org": 1, "nash@example.org": 1, "fatty@example.org": 1}
