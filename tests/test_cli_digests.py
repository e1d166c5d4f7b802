"""``alerts digests tick --now`` and ``alerts digests status``: an operator (or a test) closes windows at a
chosen instant; running it twice sends nothing twice."""

from __future__ import annotations

import json
from datetime import UTC
from zoneinfo import ZoneInfo

import pytest
from typer.testing import CliRunner

from alerts.cli import app as cli
from alerts.digests.windows import DAILY, next_close
from alerts.models import utcnow
from alerts.pipeline import ingest
from alerts.runtime import Runtime
from alerts.transports.memory import MemoryTransport
from tests.conftest import InlineEnqueue, study
from tests.factories import changed_event, follow, open_recruitment, per_recipient

TRIAL = "NCT00124774"


@pytest.fixture
def run(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setattr("alerts.logs.configure_logging", lambda settings: None)
    return CliRunner()


def test_tick_at_a_chosen_instant_twice(
    runtime: Runtime, inline: InlineEnqueue, memory: MemoryTransport, run: CliRunner
) -> None:
    record = study(TRIAL)
    ingest(runtime, changed_event(record), inline, source="test")
    follow(runtime, "pat@example.org", trial=TRIAL, frequency="daily")
    ingest(runtime, changed_event(open_recruitment(record), occurred_at="2026-12-01T09:00:00Z"), inline, "t")
    close = next_close(utcnow(), ZoneInfo("UTC"), 8, 0, DAILY).astimezone(UTC).isoformat().replace("+00:00", "Z")
    for _ in range(2):
        done = run.invoke(cli, ["digests", "tick", "--now", close, "--sync"])
        assert done.exit_code == 0, done.output
    assert per_recipient(memory) == {"pat@example.org": 1}
    status = json.loads(run.invoke(cli, ["digests", "status", "--json"]).output)
    assert status["digests"] == {"sent": 1}
    bad = run.invoke(cli, ["digests", "tick", "--now", "2026-12-01T08:00:00"])
    assert bad.exit_code != 0 and "UTC offset" in bad.output
