"""The maintenance pass on real databases: lost work comes back exactly once; old data goes."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update

from alerts import maintenance, subscriptions
from alerts.db import transaction
from alerts.models import Delivery, DeliveryCount, Subscriber, Subscription, utcnow
from alerts.pipeline import Rejected, ingest
from alerts.runtime import Runtime
from alerts.transports.memory import MemoryTransport
from tests.conftest import InlineEnqueue, study
from tests.factories import follow, new_trial_event, per_recipient


class LosingEnqueue(InlineEnqueue):
    """A broker that loses every send message (Redis restarted without persistence)."""

    def send_batch(self, event_id: int, after_id: int, upto_id: int) -> None:
        self.batches.append((event_id, after_id, upto_id))


def run(runtime: Runtime, inline: InlineEnqueue, **overrides: Any) -> maintenance.MaintenanceReport:
    options = {"batch_size": 2, "stale_after_s": 0, "pending_days": 14, "retention_days": 180} | overrides
    return maintenance.run(runtime.engine, inline.send_batch, **options)


def test_lost_send_messages_are_recovered_exactly_once(
    runtime: Runtime, inline: InlineEnqueue, memory: MemoryTransport
) -> None:
    for n in range(5):
        follow(runtime, f"p{n}@example.org", condition="Herniated Disc")
    outcome = ingest(runtime, new_trial_event(study("NCT00124774"), "Herniated Disc"), LosingEnqueue(runtime), "t")
    assert not isinstance(outcome, Rejected) and outcome.recipients == 5
    assert memory.batches == []
    report = run(runtime, inline)
    assert report.batches_requeued == 3  # 5 deliveries in batches of 2
    assert per_recipient(memory) == Counter({f"p{n}@example.org": 1 for n in range(5)})
    # Nothing left to do: running again sends nothing.
    assert run(runtime, inline).batches_requeued == 0
    assert sum(per_recipient(memory).values()) == 5


def test_expired_leases_are_released_and_resent(
    runtime: Runtime, inline: InlineEnqueue, memory: MemoryTransport
) -> None:
    follow(runtime, "a@example.org", condition="Herniated Disc")
    ingest(runtime, new_trial_event(study("NCT00124774"), "Herniated Disc"), LosingEnqueue(runtime), "t")
    # A worker claimed the batch and died before sending.
    with transaction(runtime.engine) as session:
        session.execute(update(Delivery).values(status="sending", lease_until=utcnow() - timedelta(seconds=1)))
    report = run(runtime, inline, stale_after_s=3600)
    assert report.leases_expired == 1 and report.batches_requeued == 1
    assert per_recipient(memory) == Counter({"a@example.org": 1})


def test_live_leases_and_recent_work_are_left_alone(
    runtime: Runtime, inline: InlineEnqueue, memory: MemoryTransport
) -> None:
    follow(runtime, "a@example.org", condition="Herniated Disc")
    ingest(runtime, new_trial_event(study("NCT00124774"), "Herniated Disc"), LosingEnqueue(runtime), "t")
    assert run(runtime, inline, stale_after_s=3600).batches_requeued == 0
    with transaction(runtime.engine) as session:
        session.execute(update(Delivery).values(status="sending", lease_until=utcnow() + timedelta(minutes=5)))
    assert run(runtime, inline, stale_after_s=0).batches_requeued == 0
    assert memory.batches == []


def test_unconfirmed_signups_expire(runtime: Runtime, inline: InlineEnqueue) -> None:
    with transaction(runtime.engine) as session:
        old = subscriptions.sign_up(
            session, "old@example.org", subscriptions.trial_target("NCT00124774"), runtime.signer, runtime.hasher
        )
        subscriptions.sign_up(
            session, "new@example.org", subscriptions.trial_target("NCT00124774"), runtime.signer, runtime.hasher
        )
        session.execute(
            update(Subscription)
            .where(Subscription.id == old.subscription_id)
            .values(created_at=utcnow() - timedelta(days=15))
        )
    follow(runtime, "kept@example.org", trial="NCT00124774")
    report = run(runtime, inline)
    assert report.pending_expired == 1
    with transaction(runtime.engine) as session:
        emails = sorted(session.scalars(select(Subscriber.email)))
    assert emails == ["kept@example.org", "new@example.org"]


def test_old_history_is_pruned_to_daily_counts(
    runtime: Runtime, inline: InlineEnqueue, memory: MemoryTransport
) -> None:
    for n in range(3):
        follow(runtime, f"p{n}@example.org", condition="Herniated Disc")
    ingest(runtime, new_trial_event(study("NCT00124774"), "Herniated Disc"), inline, "t")
    long_ago = utcnow() - timedelta(days=200)
    with transaction(runtime.engine) as session:
        session.execute(update(Delivery).values(created_at=long_ago))
    report = run(runtime, inline)
    assert report.deliveries_pruned == 3
    with transaction(runtime.engine) as session:
        assert session.scalar(select(func.count()).select_from(Delivery)) == 0
        counts = [(c.day, c.status, c.count) for c in session.scalars(select(DeliveryCount))]
    assert counts == [(long_ago.date(), "sent", 3)]


def test_pruning_drops_old_renderings(runtime: Runtime, inline: InlineEnqueue) -> None:
    from alerts.models import Event, EventContent

    follow(runtime, "a@example.org", condition="Herniated Disc")
    ingest(runtime, new_trial_event(study("NCT00124774"), "Herniated Disc"), inline, "t")
    with transaction(runtime.engine) as session:
        assert session.scalar(select(func.count()).select_from(EventContent)) >= 1
        session.execute(update(Event).values(received_at=utcnow() - timedelta(days=200)))
        session.execute(update(Delivery).values(created_at=utcnow() - timedelta(days=200)))
    run(runtime, inline)
    with transaction(runtime.engine) as session:
        assert session.scalar(select(func.count()).select_from(EventContent)) == 0
        assert session.scalar(select(Event.content)) is None
