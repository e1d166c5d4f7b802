"""Sign-up requests: recorded by the web, decided by a worker; never lost, never kept longer than needed."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update

from alerts import maintenance, signups, subscriptions
from alerts.db import transaction
from alerts.models import SignupRequest, Subscriber, SubscriptionStatus, utcnow
from alerts.pipeline import process_signup
from alerts.runtime import Runtime
from alerts.transports.memory import MemoryTransport
from tests.conftest import InlineEnqueue
from tests.factories import follow
from tests.web.journey import subscriptions_of, text_of

TRIAL = "NCT06740149"
OTHER = "NCT00000001"


def record(runtime: Runtime, email: str, *nct_ids: str) -> int:
    with transaction(runtime.engine) as session:
        return signups.record(session, email, [subscriptions.trial_target(n) for n in nct_ids])


def test_the_worker_decides_and_sends_one_email_for_what_needs_confirming(
    runtime: Runtime, inline: InlineEnqueue, memory: MemoryTransport
) -> None:
    active = follow(runtime, "a@example.org", trial=TRIAL)
    request_id = record(runtime, "a@example.org", TRIAL, OTHER)
    assert process_signup(runtime, request_id, inline) == "confirmation queued"
    subs = {s.target: s for s in subscriptions_of(runtime, "a@example.org")}
    assert subs[TRIAL].id == active and subs[TRIAL].status == SubscriptionStatus.ACTIVE  # left alone
    assert subs[OTHER].status == SubscriptionStatus.PENDING
    [message] = memory.messages
    assert OTHER in text_of(message) and TRIAL not in text_of(message)  # only what needs confirming
    # A redelivered task finds the request decided: nothing happens twice.
    assert process_signup(runtime, request_id, inline) == "gone"
    assert len(memory.messages) == 1
    # Already following everything: decided, nothing sent.
    assert process_signup(runtime, record(runtime, "a@example.org", TRIAL), inline) == "nothing to confirm"
    assert len(memory.messages) == 1


def test_a_pending_sign_up_submitted_again_gets_its_email_again(
    runtime: Runtime, inline: InlineEnqueue, memory: MemoryTransport
) -> None:
    for _ in range(2):
        process_signup(runtime, record(runtime, "p@example.org", TRIAL), inline)
    assert len(memory.messages) == 2
    assert len(subscriptions_of(runtime, "p@example.org")) == 1


def test_maintenance_queues_a_lost_request_again_and_drops_old_ones(runtime: Runtime, inline: InlineEnqueue) -> None:
    lost = record(runtime, "lost@example.org", TRIAL)
    fresh = record(runtime, "fresh@example.org", TRIAL)
    ancient = record(runtime, "ancient@example.org", TRIAL)
    with transaction(runtime.engine) as session:
        long_ago = utcnow() - timedelta(seconds=signups.REQUEUE_AFTER_S + 5)
        session.execute(update(SignupRequest).where(SignupRequest.id == lost).values(queued_at=long_ago))
        days_ago = utcnow() - timedelta(days=runtime.settings.pending_expiry_days + 1)
        session.execute(
            update(SignupRequest).where(SignupRequest.id == ancient).values(created_at=days_ago, queued_at=utcnow())
        )
    queued: list[int] = []
    report = maintenance.run(
        runtime.engine,
        inline.send_batch,
        batch_size=1000,
        stale_after_s=900,
        pending_days=runtime.settings.pending_expiry_days,
        retention_days=180,
        enqueue_signup=queued.append,
    )
    assert queued == [lost] and report.signups_requeued == 1
    with transaction(runtime.engine) as session:
        assert set(session.scalars(select(SignupRequest.id))) == {lost, fresh}
    # Queued again just now: the next pass leaves it alone.
    with transaction(runtime.engine) as session:
        assert signups.stale(session) == []


def test_erasure_takes_undecided_sign_ups_of_the_address_too(runtime: Runtime) -> None:
    follow(runtime, "gone@example.org", trial=TRIAL)
    record(runtime, "gone@example.org", OTHER)
    kept = record(runtime, "kept@example.org", OTHER)
    with transaction(runtime.engine) as session:
        subscriber_id = session.scalar(select(Subscriber.id).where(Subscriber.email == "gone@example.org"))
        assert subscriber_id is not None
        subscriptions.erase(session, subscriber_id)
    with transaction(runtime.engine) as session:
        assert list(session.scalars(select(SignupRequest.id))) == [kept]
