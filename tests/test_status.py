"""Operator figures: queue depths under a key prefix, "unknown" instead of 0, the CLI's status and failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from sqlalchemy import update
from typer.testing import CliRunner

from alerts.cli import app as cli
from alerts.config import environment
from alerts.db import transaction
from alerts.metrics import AlertsCollector
from alerts.models import Delivery, utcnow
from alerts.pipeline import ingest
from alerts.runtime import Runtime
from alerts.status import collect, queue_depths
from alerts.tasks.app import create_app
from tests.conftest import REDIS_URL, InlineEnqueue, study
from tests.factories import follow, new_trial_event


@pytest.fixture
def prefixed(runtime: Runtime) -> Iterator[Runtime]:
    """The runtime on Redis under a key prefix of its own (deleted afterwards)."""
    prefix = f"status-test-{uuid.uuid4().hex[:8]}:"
    runtime.settings.broker_url = f"{REDIS_URL}/0"
    runtime.settings.broker_prefix = prefix
    yield runtime
    client = redis.Redis.from_url(f"{REDIS_URL}/0")
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)


def test_queue_depth_is_read_under_the_broker_prefix(prefixed: Runtime) -> None:
    producer = create_app(prefixed.settings)
    for n in range(3):
        producer.send_task("alerts.events.trial_changed", args=[{"n": n}])
    depths, error = queue_depths(producer)
    assert error is None
    assert depths == {"events": 3, "deliveries": 0, "maintenance": 0}
    families = {f.name: f for f in AlertsCollector(prefixed.engine, producer).collect()}
    assert {s.labels["queue"]: s.value for s in families["alerts_queue_depth"].samples}["events"] == 3


def test_an_unreadable_broker_is_unknown_never_zero(runtime: Runtime) -> None:
    runtime.settings.broker_url = "redis://127.0.0.1:1/0"  # nothing listens there
    app = create_app(runtime.settings)
    status = collect(runtime.engine, app, settings=runtime.settings)
    assert status.queues == {"events": None, "deliveries": None, "maintenance": None}
    assert status.broker_error and any(p.startswith("broker unreachable") for p in status.problems)
    families = {f.name: f for f in AlertsCollector(runtime.engine, app).collect()}
    assert families["alerts_queue_depth"].samples == []  # absent, not 0
    assert [s.value for s in families["alerts_broker_up"].samples] == [0]
    assert "alerts_workers_online" not in families


@pytest.fixture
def run(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setattr("alerts.logs.configure_logging", lambda settings: None)
    return CliRunner()


def test_status_json_says_what_needs_attention(
    prefixed: Runtime, inline: InlineEnqueue, run: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("alerts.status.workers", lambda app, timeout_s=1.0: _online())
    clear = run.invoke(cli, ["status", "--json"])
    assert clear.exit_code == 0, clear.output
    data = json.loads(clear.output)
    assert data["all_clear"] is True and data["attention"] == []
    assert data["mail"]["last_sent_at"] is None and data["queues"]["events"] == 0

    follow(prefixed, "a@example.org", condition="Herniated Disc")
    ingest(prefixed, new_trial_event(study("NCT00124774"), "Herniated Disc"), inline, "t")
    with transaction(prefixed.engine) as session:
        session.execute(update(Delivery).values(status="failed", error="Invalid address", error_code=400))
    attention = run.invoke(cli, ["status", "--json"])
    assert attention.exit_code == 1
    data = json.loads(attention.output)
    assert data["all_clear"] is False
    assert data["attention"] == ["1 failed deliveries (alerts deliveries failed)"]
    assert data["mail"]["sent_last_5_min"] == 1 and data["mail"]["last_sent_at"] is not None

    text = run.invoke(cli, ["status"], env={"COLUMNS": "120"})
    assert "Mail flowing now" in text.output and "1 failed deliveries" in text.output
    assert "all clear" not in text.output


def _online() -> object:
    from alerts.status import Workers

    return Workers(available=True, online=["celery@test"], active_tasks={"celery@test": 0})


def test_status_watch_writes_every_frame_when_not_a_terminal(prefixed: Runtime) -> None:
    env = os.environ | environment(prefixed.settings) | {"ALERTS_LOG_LEVEL": "WARNING"}
    command = [sys.executable, "-c", "from alerts.cli import main; main()", "status", "--watch", "0.5", "--json"]
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as proc:
        assert proc.stdout is not None
        frames = []
        deadline = time.monotonic() + 60
        while len(frames) < 2 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line:
                frames.append(json.loads(line))  # one JSON object per line, per refresh
        proc.terminate()
    assert len(frames) == 2 and frames[0]["generated_at"] < frames[1]["generated_at"]
    assert "attention" in frames[1]


def test_failed_deliveries_are_grouped_by_reason_within_80_columns(
    runtime: Runtime, inline: InlineEnqueue, run: CliRunner
) -> None:
    for n in range(5):
        follow(runtime, f"p{n}@example.org", condition="Herniated Disc")
    ingest(runtime, new_trial_event(study("NCT00124774"), "Herniated Disc"), inline, "t")
    long_reason = "SendGrid 400: The from address does not match a verified Sender Identity. " * 3
    with transaction(runtime.engine) as session:
        session.execute(
            update(Delivery).where(Delivery.id <= 3).values(status="failed", error=long_reason, error_code=403)
        )
        session.execute(
            update(Delivery)
            .where(Delivery.id == 4)
            .values(status="failed", error="Does not contain a valid address.", error_code=400, updated_at=utcnow())
        )
    result = run.invoke(cli, ["deliveries", "failed"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80, result.output
    assert "4 in 2 group(s)" in result.output
    first = next(line for line in lines if "403" in line)
    assert first.split()[1] == "3"  # the most frequent reason first, with its count
    assert "verified" in result.output and "valid address" in result.output

    each = run.invoke(cli, ["deliveries", "failed", "--each"], env={"COLUMNS": "200"})
    assert each.exit_code == 0 and max(len(line) for line in each.output.splitlines()) <= 80
    rows = json.loads(run.invoke(cli, ["deliveries", "failed", "--json"]).output)
    assert len(rows) == 4 and {r["error_code"] for r in rows} == {400, 403}


def test_sendgrid_without_a_webhook_key_is_named_in_the_headline(runtime: Runtime) -> None:
    settings = runtime.settings.model_copy(
        update={"email_backend": "sendgrid", "sendgrid_api_key": "SG.key", "broker_url": f"{REDIS_URL}/0"}
    )
    status = collect(runtime.engine, create_app(settings), inspect_workers=False, settings=settings)
    assert any("bounces and spam reports will not be applied" in p for p in status.problems)
    assert status.as_dict()["warnings"] == status.warnings


def test_sign_ups_left_undecided_are_counted_and_named_when_old(runtime: Runtime) -> None:
    from datetime import timedelta

    from alerts import signups, subscriptions
    from alerts.models import SignupRequest

    app = create_app(runtime.settings)
    assert collect(runtime.engine, app, settings=runtime.settings).signups_waiting == 0
    with transaction(runtime.engine) as session:
        target = subscriptions.trial_target("NCT00124774")
        fresh = signups.record(session, "fresh@example.org", [target])
        old = signups.record(session, "old@example.org", [target])
        session.execute(
            update(SignupRequest).where(SignupRequest.id == old).values(created_at=utcnow() - timedelta(minutes=10))
        )
    status = collect(runtime.engine, app, settings=runtime.settings)
    assert status.signups_waiting == 2 and fresh != old
    assert status.oldest_signup_s is not None and 590 < status.oldest_signup_s < 700
    assert "2 sign-ups waiting for a worker, the oldest for 10 min: those people have no confirmation email yet" in (
        status.problems
    )
    families = {f.name: f for f in AlertsCollector(runtime.engine, app).collect()}
    assert [s.value for s in families["alerts_signups_waiting"].samples] == [2]
    assert not any("@" in p for p in status.problems)
