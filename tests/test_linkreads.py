"""The link pages' one-statement reads (PostgreSQL) say exactly what the ORM path says, for every kind of alert."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import select

from alerts import subscriptions, vocabulary
from alerts.db import transaction
from alerts.models import ConditionPhrase, Subscription, SubscriptionKind
from alerts.preferences import Preferences, set_preferences
from alerts.runtime import Runtime
from alerts.subscriptions import ConditionFilters, Target
from alerts.web import links
from alerts.web.linkstore import LinkStore, conninfo
from tests.conftest import all_studies
from tests.factories import follow
from tests.web.journey import add_trial, teach

pytestmark = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)


def _sign_up(runtime: Runtime, email: str, target: Target, **options: Any) -> int:
    with transaction(runtime.engine) as session:
        return subscriptions.sign_up(session, email, target, runtime.signer, runtime.hasher, **options).subscription_id


def _every_kind(runtime: Runtime) -> tuple[int, list[int]]:
    """One subscriber with a subscription of every kind the pages name differently; (subscriber, ids)."""
    teach(runtime, *all_studies())
    add_trial(runtime, "NCT06740149", "A study of something, with a title")
    with transaction(runtime.engine) as session:
        # A phrase the vocabulary resolved to concepts, and one of those concepts followed directly.
        phrase_key, concept = session.execute(
            select(ConditionPhrase.key, ConditionPhrase.concept_id).where(ConditionPhrase.concept_id.is_not(None))
        ).first()  # type: ignore[misc]
        plain_key = session.scalar(select(ConditionPhrase.label).where(ConditionPhrase.concept_id.is_(None)))
    email = "everything@example.org"
    ids = [
        follow(runtime, email, trial="NCT06740149"),  # a trial with its title
        follow(runtime, email, trial="NCT00000001"),  # a trial the service has no record of
        follow(runtime, email, condition=phrase_key),  # named by what it means
        _sign_up(runtime, email, Target(SubscriptionKind.CONDITION, vocabulary.concept_target(concept), "x")),
        _sign_up(runtime, email, subscriptions.condition_target(plain_key or "Some Phrase")),  # pending
        _sign_up(runtime, email, subscriptions.condition_target("Nothing Any Record Said")),  # the stored label
    ]
    with transaction(runtime.engine) as session:
        filters = ConditionFilters(recruiting_only=True, countries=("Germany", "France"), phases=("PHASE3", "PHASE2"))
        subscriptions.set_filters(session, ids[2], filters, include_narrower=True)
        subscriptions.unsubscribe(session, ids[1])
        subscriber_id = session.get(Subscription, ids[0]).subscriber_id  # type: ignore[union-attr]
        set_preferences(session, subscriber_id, Preferences(age=40, sex="FEMALE"))
    return subscriber_id, ids


def _store_reads(runtime: Runtime, subscriber_id: int, ids: list[int]) -> tuple[Any, Any, Any]:
    async def read() -> tuple[Any, Any, Any]:
        store = LinkStore(conninfo(runtime.settings.database_url) or "", 2)
        await store.open()
        try:
            one = [await store.unsubscribe(i) for i in [*ids, 10**12]]
            return one, await store.confirm([ids[3], 10**12, ids[0]]), await store.manage(subscriber_id)
        finally:
            await store.close()

    return asyncio.run(read())


def test_one_statement_names_every_alert_as_the_orm_does(runtime: Runtime) -> None:
    subscriber_id, ids = _every_kind(runtime)
    unsubscribe, confirm, manage = _store_reads(runtime, subscriber_id, ids)
    with transaction(runtime.engine) as session:
        expected = [session.get(Subscription, i) for i in ids]
        for view, subscription in zip(unsubscribe, expected, strict=False):
            assert subscription is not None and view is not None
            assert view.subscription.what == subscriptions.describe(session, subscription)
            assert view.subscription.shown == subscriptions.shown(session, subscription)
            assert view.subscription.status == subscription.status
            assert view.manage_token == subscription.subscriber.manage_token
            assert view.others == links._other_active(session, subscription.subscriber_id, subscription.id)
        assert unsubscribe[-1] is None  # no such subscription
        assert confirm == links._load(session, [ids[3], 10**12, ids[0]])
        assert manage == links._manage_view(session, subscriber_id)
    # The cases the comparison is about are really there.
    names = [v.subscription.what for v in unsubscribe[:-1]]
    assert names[0] == "changes to study NCT06740149: A study of something, with a title"
    assert names[1] == "changes to study NCT00000001"
    assert "(including narrower terms; recruiting only; in France or Germany; phase 2 or phase 3)" in names[2]
    assert names[5] == "new studies for Nothing Any Record Said"
    assert manage is not None and manage.chosen.age == 40 and len(manage.subscriptions) == 6


def test_an_erased_subscriber_reads_as_nothing(runtime: Runtime) -> None:
    subscriber_id, ids = _every_kind(runtime)
    with transaction(runtime.engine) as session:
        subscriptions.erase(session, subscriber_id)
    unsubscribe, confirm, manage = _store_reads(runtime, subscriber_id, ids)
    assert unsubscribe == [None] * (len(ids) + 1) and confirm is None and manage is None
