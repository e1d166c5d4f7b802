"""The link pages' statements (alerts.linkstate) through both stores: the threadpool one (SQLite, an app not
started) and the async one a started app uses on PostgreSQL. Both must say exactly what the ORM path says."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg_pool import PoolTimeout

from alerts import subscriptions
from alerts.db import transaction
from alerts.models import Subscription, SubscriptionStatus
from alerts.runtime import Runtime
from alerts.web.linkstore import POOL_SIZE, AsyncLinkStore, LinkStore, ThreadLinkStore
from tests.factories import follow
from tests.web.journey import add_trial, snapshot

TRIAL = "NCT06740149"


@pytest.fixture
def stores(client: TestClient, runtime: Runtime) -> Iterator[list[tuple[str, LinkStore]]]:
    """The threadpool store, and the started app's own store (async on PostgreSQL)."""
    found: list[tuple[str, LinkStore]] = [("thread", ThreadLinkStore(runtime.engine))]
    started = client.app.state.links  # type: ignore[attr-defined]
    if runtime.engine.dialect.name == "postgresql":
        assert isinstance(started, AsyncLinkStore)
        found.append(("async", started))
    else:
        assert isinstance(started, ThreadLinkStore)
    yield found


def call(client: TestClient, coroutine: object) -> object:
    """Run a store call on the started app's event loop (the async store's pool lives there)."""

    async def run() -> object:
        return await coroutine  # type: ignore[misc]

    assert client.portal is not None
    return client.portal.call(run)


def describe(runtime: Runtime, subscription_id: int) -> str:
    with transaction(runtime.engine) as session:
        subscription = session.get(Subscription, subscription_id)
        assert subscription is not None
        return subscriptions.describe(session, subscription)


def test_reads_name_alerts_as_the_orm_does(
    client: TestClient, runtime: Runtime, stores: list[tuple[str, LinkStore]]
) -> None:
    add_trial(runtime, TRIAL, "A study of liver failure")
    trial_id = follow(runtime, "a@example.org", trial=TRIAL)
    unknown_trial_id = follow(runtime, "a@example.org", trial="NCT00000001")
    condition_id = follow(runtime, "a@example.org", condition="Asthma")
    filtered = subscriptions.ConditionFilters(recruiting_only=True, countries=("France", "Germany"), phases=("PHASE2",))
    with transaction(runtime.engine) as session:
        subscriptions.set_filters(session, condition_id, filtered, include_narrower=True)
        subscriptions.unsubscribe(session, unknown_trial_id)
    before = snapshot(runtime)
    for name, store in stores:
        for subscription_id in (trial_id, unknown_trial_id, condition_id):
            state = call(client, store.read(subscription_id))
            assert state is not None, name
            assert state.what == describe(runtime, subscription_id), name  # type: ignore[attr-defined]
            assert state.others == (1 if subscription_id != unknown_trial_id else 2), name  # type: ignore[attr-defined]
        assert "in France or Germany" in call(client, store.read(condition_id)).what  # type: ignore[attr-defined]
        assert call(client, store.read(10**9)) is None, name
    assert snapshot(runtime) == before


def test_listed_and_erased(client: TestClient, runtime: Runtime, stores: list[tuple[str, LinkStore]]) -> None:
    add_trial(runtime, TRIAL, "A study of liver failure")
    first = follow(runtime, "a@example.org", trial=TRIAL)
    second = follow(runtime, "a@example.org", condition="Asthma")
    state = call(client, ThreadLinkStore(runtime.engine).read(first))
    subscriber_id = state.subscriber_id  # type: ignore[attr-defined]
    for name, store in stores:
        listed = call(client, store.listed(subscriber_id))
        assert [(item.id, item.title) for item in listed] == [  # type: ignore[attr-defined]
            (first, "A study of liver failure"),
            (second, None),
        ], name
    with transaction(runtime.engine) as session:
        subscriptions.erase(session, subscriber_id)
    for name, store in stores:
        assert call(client, store.listed(subscriber_id)) is None, name
        assert call(client, store.read(first)) is None, name


@pytest.mark.parametrize("every", [False, True])
def test_unsubscribe_is_idempotent(
    client: TestClient, runtime: Runtime, stores: list[tuple[str, LinkStore]], every: bool
) -> None:
    for name, store in stores:
        email = f"{name}-{every}@example.org"
        first = follow(runtime, email, trial=TRIAL)
        second = follow(runtime, email, condition="Asthma")
        for _ in range(2):
            state = call(client, store.unsubscribe(first, every=every))
            assert state is not None and state.what.startswith("changes to study"), name  # type: ignore[attr-defined]
        with transaction(runtime.engine) as session:
            statuses = [session.get(Subscription, i).status for i in (first, second)]  # type: ignore[union-attr]
        expected_second = SubscriptionStatus.UNSUBSCRIBED if every else SubscriptionStatus.ACTIVE
        assert statuses == [SubscriptionStatus.UNSUBSCRIBED, expected_second], name
        assert call(client, store.unsubscribe(10**9, every=every)) is None, name


def test_pages_survive_a_database_restart(client: TestClient, runtime: Runtime) -> None:
    """Connections the server dropped (a restart, a failover) cost no page: the store retries on a new one."""
    if runtime.engine.dialect.name != "postgresql":
        pytest.skip("the async store is PostgreSQL's")
    store = client.app.state.links  # type: ignore[attr-defined]
    subscription_id = follow(runtime, "a@example.org", trial=TRIAL)
    with transaction(runtime.engine) as session:
        token = session.get(Subscription, subscription_id).unsubscribe_token  # type: ignore[union-attr]
    assert client.get(f"/unsubscribe/{token}").status_code == 200

    async def backend_pids() -> set[int]:
        async def one() -> int:
            async with store.pool.connection() as conn:
                await asyncio.sleep(0.05)  # hold it, so the others are handed out too
                return int(conn.info.backend_pid)

        return set(await asyncio.gather(*(one() for _ in range(POOL_SIZE))))

    assert client.portal is not None
    pids = client.portal.call(backend_pids)
    assert len(pids) == POOL_SIZE
    url = runtime.settings.database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url, autocommit=True) as admin:
        for pid in pids:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    page = client.get(f"/unsubscribe/{token}")
    assert page.status_code == 200
    assert "Unsubscribe from this alert" in page.text


def test_an_unreachable_database_fails_within_the_pool_timeout() -> None:
    """PostgreSQL down: the page fails (the friendly 500) after the pool's timeout, not after one per retry."""
    store = AsyncLinkStore.for_url("postgresql+psycopg://nobody@127.0.0.1:9/none?connect_timeout=1", timeout_s=0.5)

    async def read() -> None:
        await store.open()
        try:
            await store.read(1)
        finally:
            await store.close()

    started = time.monotonic()
    with pytest.raises(PoolTimeout):
        asyncio.run(read())
    assert time.monotonic() - started < 3
