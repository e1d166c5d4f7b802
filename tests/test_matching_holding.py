"""Held items go to exactly the subscribers whose news-owning subscription is a digest, and an event with
no digest audience costs one index probe: no advisory lock, no held-items INSERT (alerts.matching)."""

from __future__ import annotations

import pytest
from sqlalchemy import event, select, text, update

from alerts.db import transaction
from alerts.models import Delivery, HeldItem, Subscriber, Subscription
from alerts.pipeline import ingest
from alerts.runtime import Runtime
from tests.conftest import InlineEnqueue, study
from tests.factories import follow, new_trial_event

TRIAL = "NCT00124774"  # "Herniated Disc", filed under Intervertebral Disc Displacement: both phrases match it


def addresses(runtime: Runtime, table: type[Delivery] | type[HeldItem]) -> set[str]:
    with transaction(runtime.engine) as session:
        rows = session.scalars(select(Subscriber.email).join(table, table.subscriber_id == Subscriber.id))
        return set(rows)


def test_the_oldest_matching_subscription_decides_between_an_email_and_a_held_item(
    runtime: Runtime, inline: InlineEnqueue
) -> None:
    follow(runtime, "now@example.org", condition="Herniated Disc")
    follow(runtime, "daily@example.org", condition="Herniated Disc", frequency="daily")
    follow(runtime, "weekly@example.org", condition="Intervertebral Disc Displacement", frequency="weekly")
    # Older immediate subscription owns the news; the newer digest one does not hold it.
    follow(runtime, "both@example.org", condition="Intervertebral Disc Displacement")
    follow(runtime, "both@example.org", condition="Herniated Disc", frequency="daily")
    # Older digest subscription owns it; the newer immediate one sends nothing now.
    follow(runtime, "later@example.org", condition="Herniated Disc", frequency="daily")
    follow(runtime, "later@example.org", condition="Intervertebral Disc Displacement")
    # A digest subscriber of something else is not part of this event's audience.
    follow(runtime, "other@example.org", condition="Asthma", frequency="daily")

    ingest(runtime, new_trial_event(study(TRIAL), "Herniated Disc"), inline, source="test")

    assert addresses(runtime, Delivery) == {"now@example.org", "both@example.org"}
    assert addresses(runtime, HeldItem) == {"daily@example.org", "weekly@example.org", "later@example.org"}


def test_an_event_without_a_digest_audience_takes_no_lock_and_inserts_no_held_item(
    runtime: Runtime, inline: InlineEnqueue
) -> None:
    follow(runtime, "now@example.org", condition="Herniated Disc")
    follow(runtime, "other@example.org", condition="Asthma", frequency="daily")
    statements: list[str] = []

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    event.listen(runtime.engine, "before_cursor_execute", count)
    try:
        ingest(runtime, new_trial_event(study(TRIAL), "Herniated Disc"), inline, source="test")
    finally:
        event.remove(runtime.engine, "before_cursor_execute", count)
    assert addresses(runtime, Delivery) == {"now@example.org"}
    assert addresses(runtime, HeldItem) == set()
    # The digests' hold lock (shared; the vocabulary's own lock is another one: this trial teaches).
    assert not [s for s in statements if "pg_advisory_xact_lock_shared" in s or "INSERT INTO held_items" in s]


def test_the_audience_probe_reads_the_partial_index(runtime: Runtime) -> None:
    """On PostgreSQL (SQLite's planner may as well use the matching index: embedded sizes are small)."""
    if runtime.engine.dialect.name != "postgresql":
        pytest.skip("the planner choice asserted is PostgreSQL's")
    follow(runtime, "daily@example.org", condition="Herniated Disc", frequency="daily")
    with runtime.engine.connect() as connection:
        probe = (
            "SELECT subscriber_id FROM subscriptions WHERE kind = 'condition' AND target IN ('herniated disc') "
            "AND frequency <> 'immediately' AND status = 'active' LIMIT 1"
        )
        connection.execute(text("SET enable_seqscan = off"))  # a tiny table: ask which index it would use
        plan = "\n".join(r[0] for r in connection.execute(text("EXPLAIN " + probe)))
    assert "ix_subscriptions_digest" in plan


def test_held_items_pass_the_same_filters_as_emails(runtime: Runtime, inline: InlineEnqueue) -> None:
    follow(runtime, "any@example.org", condition="Herniated Disc", frequency="daily")
    picky = follow(runtime, "open-only@example.org", condition="Herniated Disc", frequency="daily")
    with transaction(runtime.engine) as session:
        session.execute(update(Subscription).where(Subscription.id == picky).values(recruiting_only=True))

    ingest(runtime, new_trial_event(study(TRIAL), "Herniated Disc"), inline, source="test")  # a completed trial

    assert addresses(runtime, HeldItem) == {"any@example.org"}
