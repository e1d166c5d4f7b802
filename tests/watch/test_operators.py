"""What operators use: the lock, `alerts watch`, `alerts status`, /ops, /metrics, the beat task, a real kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select
from typer.testing import CliRunner

from alerts.cli import app as cli
from alerts.config import environment
from alerts.ctgov.standin import RegistryStandIn
from alerts.db import transaction
from alerts.models import Delivery, Event, WatchState
from alerts.runtime import Runtime
from alerts.tasks.app import beat_schedule, create_app
from alerts.watch import lock
from alerts.watch.passes import PassReport
from alerts.web import create_app as create_web
from tests.conftest import REDIS_URL, InlineEnqueue, study
from tests.factories import follow
from tests.watch.conftest import fast_client

Watch = Callable[..., PassReport]


def test_two_passes_never_run_at_once(runtime: Runtime, watch: Watch) -> None:
    engine = runtime.engine
    assert lock.acquire(engine, "elsewhere:1:a", 60)
    assert not lock.acquire(engine, "elsewhere:2:b", 60)
    busy = watch()
    assert busy.outcome == "busy" and "another pass holds the lock" in (busy.reason or "")
    lock.release(engine, "elsewhere:1:a")
    assert watch().outcome == "finished"


def test_a_dead_or_expired_holder_loses_the_lock(runtime: Runtime) -> None:
    engine = runtime.engine
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert lock.acquire(engine, f"{lock.owner_id().split(':')[0]}:{dead.pid}:x", 600)
    assert lock.acquire(engine, lock.owner_id(), 600)  # same host, holder's process gone: no need to wait
    other_host = "another-host:1:y"
    with transaction(engine) as session:
        session.execute(WatchState.__table__.update().values(lock_owner=other_host, lock_until=None))
    assert lock.acquire(engine, lock.owner_id(), 600)  # expired (no lease left)
    with pytest.raises(lock.LockLost), transaction(engine) as session:
        lock.renew(session, other_host, 60)


def _cli(runtime: Runtime, registry: RegistryStandIn, *args: str) -> Any:
    runtime.settings.ctgov_url = registry.url
    runtime.settings.ctgov_rate_per_s = 1000.0
    return CliRunner().invoke(cli, list(args))


def test_cli_watch_and_status(runtime: Runtime, registry: RegistryStandIn, tmp_path: Path) -> None:
    runtime.settings.broker_dir = tmp_path / "broker"
    first = _cli(runtime, registry, "watch", "--json")
    assert first.exit_code == 0, first.output
    report = json.loads(first.stdout)
    assert report["outcome"] == "finished" and report["bootstrap"] and report["counts"]["stored"] == 128
    assert _cli(runtime, registry, "watch", "--since", "yesterday").exit_code == 2
    assert _cli(runtime, registry, "watch", "--bootstrap", "--since", "2026-01-01").exit_code == 2
    dry = _cli(runtime, registry, "watch", "--dry-run", "--since", "2020-01-01")
    assert dry.exit_code == 0 and "dry run: nothing was stored or sent" in dry.output
    status = _cli(runtime, registry, "status", "--json")
    watcher = json.loads(status.stdout)["watch"]
    assert watcher["cursor"] == registry.today.isoformat() and watcher["data_timestamp"] == registry.data_timestamp
    assert watcher["last_pass"]["outcome"] == "finished" and watcher["last_pass"]["counts"]["read"] == 128
    assert lock.acquire(runtime.engine, "elsewhere:1:a", 60)
    assert _cli(runtime, registry, "watch").exit_code == 75  # busy: try later
    lock.release(runtime.engine, "elsewhere:1:a")
    registry.advance_day([study("NCT04388332")])
    registry.inject("500", times=10)
    runtime.settings.ctgov_retries, runtime.settings.ctgov_retry_base_s = 1, 0.01
    failed = _cli(runtime, registry, "watch")
    assert failed.exit_code == 1 and "HTTP 500" in failed.output
    shown = _cli(runtime, registry, "status")
    assert "Registry watcher" in shown.output and "last pass failed" in shown.output


OPS = {"Authorization": "Bearer ops-token-for-tests"}


@pytest.fixture
def ops_client(runtime: Runtime, inline: InlineEnqueue) -> TestClient:
    runtime.settings.broker_url = f"{REDIS_URL}/0"
    runtime.settings.broker_prefix = f"watch-ops-{uuid.uuid4().hex[:6]}:"
    app = create_web(runtime, enqueue=inline)
    app.state.celery = create_app(runtime.settings)
    return TestClient(app, raise_server_exceptions=False)


def test_ops_page_and_metrics_show_the_watcher(
    ops_client: TestClient, runtime: Runtime, registry: RegistryStandIn, watch: Watch
) -> None:
    follow(runtime, "a@example.org", trial="NCT04388332")
    watch()
    changed = study("NCT04388332")
    changed["protocolSection"]["statusModule"]["overallStatus"] = "COMPLETED"
    registry.advance_day([changed])
    watch()
    families = {f.name: f for f in text_string_to_metric_families(ops_client.get("/metrics", headers=OPS).text)}
    events = {s.labels["type"]: s.value for s in families["alerts_watch_events"].samples}
    assert events == {"trial.changed": 1.0, "trial.new_for_condition": 0.0}
    assert families["alerts_watch_last_pass_ok"].samples[0].value == 1.0
    registry.advance_day([study("NCT04388332")])
    registry.inject("truncated", times=4)
    assert watch().outcome == "failed"
    page = ops_client.get("/ops", headers=OPS).text
    assert "Registry watcher" in page and "truncated or invalid JSON" in page and "Needs attention" in page
    families = {f.name: f for f in text_string_to_metric_families(ops_client.get("/metrics", headers=OPS).text)}
    assert families["alerts_watch_last_pass_ok"].samples[0].value == 0.0


def test_beat_runs_the_watcher_only_when_enabled(runtime: Runtime) -> None:
    assert "watch" not in beat_schedule(runtime.settings)
    enabled = runtime.settings.model_copy(update={"watch_enabled": True, "watch_interval_s": 900.0})
    entry = beat_schedule(enabled)["watch"]
    assert entry["task"] == "alerts.watch.run" and entry["schedule"] == 900.0
    assert create_app(enabled).conf.task_routes["alerts.watch.*"]["queue"] == "maintenance"
    from alerts.tasks.watch import run

    assert run.run() == {"outcome": "disabled"}


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_real_kill_mid_pass_resumes_with_the_same_totals(
    runtime: Runtime, registry: RegistryStandIn, watch: Watch, tmp_path: Path, db_url: str
) -> None:
    """`alerts watch` in its own process, SIGKILLed after its first page: the next pass takes over at once."""
    follows = ["NCT04388332", "NCT04325464", "NCT05486611", "NCT04664634"]
    for n, nct in enumerate(follows):
        follow(runtime, f"p{n}@example.org", trial=nct)
    watch()
    edited = []
    for nct in follows:
        record = study(nct)
        record["protocolSection"]["statusModule"]["overallStatus"] = "WITHDRAWN"
        edited.append(record)
    registry.advance_day(edited)
    env = (
        os.environ
        | environment(runtime.settings)
        | {
            "ALERTS_CTGOV_URL": registry.url,
            "ALERTS_CTGOV_RATE_PER_S": "2",  # half a second between pages: time to kill it after the first
            "ALERTS_WATCH_PAGE_SIZE": "1",
            "ALERTS_BROKER_URL": "filesystem://",
            "ALERTS_BROKER_DIR": str(tmp_path / "broker"),
        }
    )
    alerts = Path(sys.executable).parent / "alerts"
    child = subprocess.Popen([str(alerts), "watch"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with transaction(runtime.engine) as session:
            state = session.get(WatchState, "ctgov")
            if state is not None and (state.pass_counts or {}).get("read", 0) >= 1:
                break
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    with transaction(runtime.engine) as session:
        state = session.get(WatchState, "ctgov")
        assert state is not None and state.pass_started_at is not None and state.lock_owner  # died holding it
        read_before = (state.pass_counts or {}).get("read", 0)
    assert 1 <= read_before < 4
    resumed = watch(client=fast_client(registry))
    assert resumed.outcome == "finished" and resumed.resumed and resumed.counts["read"] == 4
    with transaction(runtime.engine) as session:
        events = session.scalar(select(func.count()).select_from(Event))
        deliveries = session.execute(
            select(Delivery.subscriber_id, func.count()).group_by(Delivery.subscriber_id)
        ).all()
    assert events == 4
    assert sorted(n for _, n in deliveries) == [1, 1, 1, 1]
