"""Subscription rules on both databases."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from alerts import subscriptions
from alerts.db import transaction
from alerts.models import Subscriber, Subscription
from alerts.runtime import Runtime
from alerts.tokens import Purpose
from tests.factories import follow


def test_erased_ids_are_never_reused(runtime: Runtime) -> None:
    """Links carry ids: an erased person's old links must never reach someone who signs up later."""
    kept = follow(runtime, "kept@example.org", trial="NCT00124774")
    erased = follow(runtime, "erased@example.org", trial="NCT00124774")
    with transaction(runtime.engine) as session:
        subscription = session.get(Subscription, erased)
        assert subscription is not None
        old_subscriber, old_token = subscription.subscriber_id, subscription.unsubscribe_token
        assert subscriptions.erase(session, old_subscriber)
    newcomer = follow(runtime, "newcomer@example.org", trial="NCT00124774")
    assert newcomer > erased > kept
    with transaction(runtime.engine) as session:
        assert session.get(Subscription, runtime.signer.verify(Purpose.UNSUBSCRIBE, old_token)) is None
        assert max(session.scalars(select(Subscriber.id))) > old_subscriber


def test_resubmitting_never_downgrades_an_active_subscription(runtime: Runtime) -> None:
    subscription_id = follow(runtime, "a@example.org", trial="NCT00124774")
    with transaction(runtime.engine) as session:
        again = subscriptions.sign_up(
            session, "A@Example.org", subscriptions.trial_target("nct00124774"), runtime.signer, runtime.hasher
        )
        assert again.subscription_id == subscription_id and not again.needs_confirmation
        assert session.get(Subscription, subscription_id).status == "active"  # type: ignore[union-attr]


@pytest.mark.parametrize("bad", ["NCT123", "12345678", "NCT١٢٣٤٥٦٧٨", ""])
def test_trial_targets_are_validated(bad: str) -> None:
    with pytest.raises(subscriptions.InvalidTarget):
        subscriptions.trial_target(bad)
