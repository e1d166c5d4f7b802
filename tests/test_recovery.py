"""Operator recovery: failed deliveries back in the queue, replaying an event to new subscribers."""

from __future__ import annotations

from collections import Counter

import pytest
from sqlalchemy import update

from alerts.db import transaction
from alerts.models import Delivery
from alerts.pipeline import Rejected, ingest
from alerts.recovery import CannotReplay, failed_deliveries, replay, requeue_failed
from alerts.runtime import Runtime
from alerts.transports.memory import MemoryTransport
from tests.conftest import InlineEnqueue, study
from tests.factories import follow, new_trial_event, per_recipient


def test_failed_deliveries_are_listed_and_requeued_once(
    runtime: Runtime, inline: InlineEnqueue, memory: MemoryTransport
) -> None:
    for n in range(3):
        follow(runtime, f"p{n}@example.org", condition="Herniated Disc")
    ingest(runtime, new_trial_event(study("NCT00124774"), "Herniated Disc"), inline, "t")
    with transaction(runtime.engine) as session:
        session.execute(
            update(Delivery).where(Delivery.id == 2).values(status="failed", error="401 Unauthorized", error_code=401)
        )
        failed = failed_deliveries(session)
        assert [(f.delivery_id, f.error_code, f.nct_id) for f in failed] == [(2, 401, "NCT00124774")]
        ranges = requeue_failed(session, batch_size=1000)
    for event_id, after_id, upto_id in ranges:
        inline.send_batch(event_id, after_id, upto_id)
    # The failed one went out again; the two already sent were not touched.
    assert per_recipient(memory) == Counter({"p0@example.org": 1, "p1@example.org": 2, "p2@example.org": 1})


def test_replay_reaches_only_new_subscribers(runtime: Runtime, inline: InlineEnqueue, memory: MemoryTransport) -> None:
    follow(runtime, "early@example.org", condition="Herniated Disc")
    outcome = ingest(runtime, new_trial_event(study("NCT00124774"), "Herniated Disc"), inline, "t")
    assert not isinstance(outcome, Rejected)
    follow(runtime, "late@example.org", condition="herniated disc")
    follow(runtime, "other@example.org", condition="Asthma")
    with transaction(runtime.engine) as session:
        dry = replay(session, outcome.event_id, 1000, dry_run=True)
    assert dry.new_recipients == 1 and dry.ranges == []
    assert per_recipient(memory) == Counter({"early@example.org": 1})
    with transaction(runtime.engine) as session:
        done = replay(session, outcome.event_id, 1000, dry_run=False)
    for event_id, after_id, upto_id in done.ranges:
        inline.send_batch(event_id, after_id, upto_id)
    assert per_recipient(memory) == Counter({"early@example.org": 1, "late@example.org": 1})
    with transaction(runtime.engine) as session:
        assert replay(session, outcome.event_id, 1000, dry_run=False).new_recipients == 0


def test_replay_refuses_events_that_matched_nothing(runtime: Runtime, inline: InlineEnqueue) -> None:
    outcome = ingest(
        runtime,
        {"type": "trial.changed", "occurred_at": "2026-11-20T10:00:00Z", "trial": study("NCT00124774")},
        inline,
        "t",
    )
    assert not isinstance(outcome, Rejected) and outcome.status == "no_op"
    with transaction(runtime.engine) as session, pytest.raises(CannotReplay, match="no_op"):
        replay(session, outcome.event_id, 1000, dry_run=True)
    with transaction(runtime.engine) as session, pytest.raises(CannotReplay, match="no event"):
        replay(session, 999, 1000, dry_run=True)
