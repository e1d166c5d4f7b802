"""Suppressions: kept by keyed hash, checked at send time, outliving erasure; the operator commands."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from alerts import pipeline, subscriptions
from alerts.cli import app as cli
from alerts.db import transaction
from alerts.models import Delivery, Subscriber, Suppression
from alerts.pipeline import ingest
from alerts.runtime import Runtime
from alerts.suppressions import address_hash, is_suppressed, lift, list_suppressions, suppress
from alerts.transports.memory import MemoryTransport
from tests.conftest import InlineEnqueue, study
from tests.factories import follow, new_trial_event


def test_suppress_is_by_normalized_keyed_hash(runtime: Runtime) -> None:
    with transaction(runtime.engine) as session:
        assert suppress(session, runtime.hasher, " Someone@Example.ORG ", "bounce", "sendgrid:bounce", "550")
        assert not suppress(session, runtime.hasher, "someone@example.org", "spamreport")  # first reason kept
    with transaction(runtime.engine) as session:
        (row,) = session.scalars(select(Suppression)).all()
        assert row.email_hash == runtime.hasher("someone@example.org")
        assert (row.reason, row.source, row.detail) == ("bounce", "sendgrid:bounce", "550")
        assert is_suppressed(session, runtime.hasher, "SOMEONE@example.org")
        assert address_hash(runtime.hasher, "not an address") == runtime.hasher("not an address")
        assert lift(session, runtime.hasher, "someone@EXAMPLE.org")
        assert not lift(session, runtime.hasher, "someone@example.org")
        assert list_suppressions(session) == []


def test_suppressed_addresses_get_no_alert_and_no_confirmation(
    runtime: Runtime, inline: InlineEnqueue, memory: MemoryTransport
) -> None:
    follow(runtime, "kept@example.org", condition="herniated disc")
    follow(runtime, "blocked@example.org", condition="herniated disc")
    with transaction(runtime.engine) as session:
        suppress(session, runtime.hasher, "blocked@example.org", "spamreport")
        signup = subscriptions.sign_up(
            session, "blocked@example.org", subscriptions.trial_target("NCT04015791"), runtime.signer, runtime.hasher
        )
    ingest(runtime, new_trial_event(study("NCT00124774"), "Herniated Disc"), inline, "test")
    assert [str(m["To"]) for m in memory.messages] == ["kept@example.org"]
    with transaction(runtime.engine) as session:
        assert sorted(session.scalars(select(Delivery.status))) == ["sent", "suppressed"]
    assert pipeline.send_confirmation(runtime, signup.subscription_id) == "suppressed"
    assert len(memory.messages) == 1


def test_a_suppression_outlives_erasure(runtime: Runtime, inline: InlineEnqueue, memory: MemoryTransport) -> None:
    follow(runtime, "erased@example.org", condition="herniated disc")
    with transaction(runtime.engine) as session:
        suppress(session, runtime.hasher, "erased@example.org", "bounce")
        subscriber = session.scalar(select(Subscriber))
        assert subscriber is not None
        subscriptions.erase(session, subscriber.id)
    with transaction(runtime.engine) as session:
        assert "erased" not in json.dumps([s.email_hash + (s.detail or "") for s in list_suppressions(session)])
    # The person signs up again later: still suppressed.
    follow(runtime, "erased@example.org", condition="herniated disc")
    ingest(runtime, new_trial_event(study("NCT00124774"), "Herniated Disc"), inline, "test")
    assert memory.messages == []


@pytest.fixture
def run(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    # The commands use the process runtime (this test's, see conftest); leave logging as pytest set it.
    monkeypatch.setattr("alerts.logs.configure_logging", lambda settings: None)
    return CliRunner()


def test_operator_commands(runtime: Runtime, run: CliRunner) -> None:
    added = run.invoke(cli, ["suppressions", "add", "Person@Example.org", "--reason", "complaint"])
    assert added.exit_code == 0, added.output
    prefix = runtime.hasher("person@example.org")[:12]
    assert prefix in added.output
    again = run.invoke(cli, ["suppressions", "add", "person@example.org"])
    assert "already suppressed" in again.output

    listed = run.invoke(cli, ["suppressions", "list"], env={"COLUMNS": "200"})
    assert listed.exit_code == 0 and prefix in listed.output and "complaint" in listed.output
    assert "person@" not in listed.output.lower(), "the address is never shown (nor kept)"
    as_json = json.loads(run.invoke(cli, ["suppressions", "list", "--json"]).output)
    assert [(i["hash"], i["reason"], i["source"]) for i in as_json] == [(prefix, "complaint", "operator")]

    lifted = run.invoke(cli, ["suppressions", "lift", "PERSON@example.org"])
    assert lifted.exit_code == 0 and "lifted" in lifted.output
    missing = run.invoke(cli, ["suppressions", "lift", "person@example.org"])
    assert missing.exit_code == 1 and "not suppressed" in missing.output
    assert json.loads(run.invoke(cli, ["suppressions", "list", "--json"]).output) == []
