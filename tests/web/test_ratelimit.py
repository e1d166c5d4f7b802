"""Sign-up rate limits on the real Redis: per client IP, per address (confirmation emails only)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient

from alerts.config import ConfigError, load_settings
from alerts.models import SubscriptionStatus
from alerts.runtime import Runtime
from alerts.transports.memory import MemoryTransport
from alerts.web.ratelimit import RateLimited, RateLimiter
from tests.conftest import REDIS_URL, SECRET, InlineEnqueue
from tests.factories import follow
from tests.web.journey import client_for, limited_app, subscriptions_of, teach

TRIAL = "NCT06740149"
HTML = {"Accept": "text/html"}


@pytest.fixture
def app(runtime: Runtime, inline: InlineEnqueue, request: pytest.FixtureRequest) -> Iterator[FastAPI]:
    limits = getattr(request, "param", {"signup_per_ip": "3/minute", "confirm_per_address": "2/day"})
    app = limited_app(runtime, inline, **limits)
    yield app
    app.state.limiter.reset()


@pytest.fixture
def limited(app: FastAPI) -> TestClient:
    return client_for(app)


def redis_keys(runtime: Runtime) -> list[str]:
    conn = redis.Redis.from_url(REDIS_URL)
    return [k.decode() for k in conn.scan_iter(f"{runtime.settings.ratelimit_prefix}*")]


def test_per_ip_limit_answers_429_with_retry_after_then_resets(limited: TestClient, app: FastAPI) -> None:
    for n in range(3):
        response = limited.post("/api/subscriptions", json={"email": f"p{n}@example.org", "trial": TRIAL})
        assert response.status_code == 202
    over = limited.post("/api/subscriptions", json={"email": "p9@example.org", "trial": TRIAL})
    assert over.status_code == 429
    retry_after = int(over.headers["Retry-After"])
    assert 0 < retry_after <= 60
    assert over.json()["retry_after_s"] == retry_after
    page = limited.post("/subscribe", data={"email": "p9@example.org", "trial": TRIAL}, headers=HTML)
    assert page.status_code == 429
    assert int(page.headers["Retry-After"]) > 0
    assert "Please wait a little" in page.text
    assert "p9@example.org" not in page.text

    app.state.limiter.reset()
    assert limited.post("/api/subscriptions", json={"email": "p9@example.org", "trial": TRIAL}).status_code == 202


def test_invalid_input_does_not_use_up_the_limit(limited: TestClient) -> None:
    for _ in range(5):
        assert limited.post("/api/subscriptions", json={"email": "nope", "trial": TRIAL}).status_code == 422
        assert limited.post("/subscribe", data={"email": "nope", "trial": TRIAL}).status_code == 422
    assert limited.post("/api/subscriptions", json={"email": "ok@example.org", "trial": TRIAL}).status_code == 202


# A window of a few seconds: the three attempts fall inside it even on a slow, busy machine (a one-second
# window let the first hit expire before the third on one CI run).
@pytest.mark.parametrize("app", [{"signup_per_ip": "2 per 5 seconds"}], indirect=True)
def test_the_window_moves_on(limited: TestClient) -> None:
    def attempt() -> int:
        return int(limited.post("/api/subscriptions", json={"email": "w@example.org", "trial": TRIAL}).status_code)

    assert [attempt(), attempt()] == [202, 202]
    over = limited.post("/api/subscriptions", json={"email": "w@example.org", "trial": TRIAL})
    assert over.status_code == 429
    wait = int(over.headers["Retry-After"])
    assert 1 <= wait <= 5
    time.sleep(wait + 0.1)
    assert attempt() == 202


@pytest.mark.parametrize("app", [{"signup_per_ip": "100/minute", "confirm_per_address": "3/day"}], indirect=True)
def test_per_address_limit_is_the_same_for_known_and_unknown_addresses(
    limited: TestClient, runtime: Runtime, memory: MemoryTransport
) -> None:
    follow(runtime, "known@example.org", trial="NCT00000001")
    teach(runtime)
    answers = {}
    for address in ("known@example.org", "stranger@example.org"):
        # Three attempts, whatever the spelling of the address; re-submitting what is active counts too.
        codes = [
            limited.post("/api/subscriptions", json={"email": spelling, "trial": "NCT00000001"}).status_code
            for spelling in (address, address.upper(), address)
        ]
        over = limited.post("/api/subscriptions", json={"email": address, "condition": "liver failure"})
        body = over.json() if over.status_code != 202 else None
        assert int(over.headers["Retry-After"]) > 23 * 3600
        # The wait counts down with the clock: a second may pass between the two addresses' attempts.
        if body is not None:
            body["retry_after_s"] = round(body["retry_after_s"] / 60)
        answers[address] = (codes, over.status_code, body)
    # Identical answers: the limit does not tell a stranger whether someone is subscribed.
    assert answers["known@example.org"] == answers["stranger@example.org"]
    assert answers["known@example.org"][:2] == ([202, 202, 202], 429)
    # Refused means refused: no subscription, no email for the refused attempt.
    assert sorted(s.label for s in subscriptions_of(runtime, "stranger@example.org")) == ["NCT00000001"]
    assert sorted(s.label for s in subscriptions_of(runtime, "known@example.org")) == ["NCT00000001"]
    # The stranger got at most one confirmation email per pending subscription (re-sends while pending).
    assert {str(m["To"]) for m in memory.messages} == {"stranger@example.org"}
    # Other addresses are not affected.
    other = limited.post("/api/subscriptions", json={"email": "b@example.org", "condition": "liver failure"})
    assert other.status_code == 202


@pytest.mark.parametrize("app", [{"signup_per_ip": "100/minute", "confirm_per_address": "3/day"}], indirect=True)
def test_one_submission_is_one_attempt_however_many_choices(
    limited: TestClient, runtime: Runtime, memory: MemoryTransport
) -> None:
    teach(runtime)
    both = {
        "email": "two@example.org",
        "trial": TRIAL,
        "condition": ["Liver Failure", "Acute-On-Chronic Liver Failure"],
    }
    for _ in range(3):
        assert limited.post("/subscribe", data=both, follow_redirects=False).status_code == 303
    # Three submissions of three choices each: three attempts (not nine), three emails (one each).
    response = limited.post("/subscribe", data=both, follow_redirects=False, headers=HTML)
    assert response.status_code == 429
    assert len(memory.messages) == 3
    assert all(str(m["Subject"]) == "Please confirm your 3 alerts" for m in memory.messages)
    labels = [s.label for s in subscriptions_of(runtime, "two@example.org")]
    assert labels == [TRIAL, "Liver Failure", "Acute-On-Chronic Liver Failure"]
    assert all(s.status == SubscriptionStatus.PENDING for s in subscriptions_of(runtime, "two@example.org"))


def test_keys_are_hashes_under_the_prefix(limited: TestClient, runtime: Runtime) -> None:
    limited.post("/api/subscriptions", json={"email": "private@example.org", "trial": TRIAL})
    keys = redis_keys(runtime)
    assert len(keys) == 2  # one per-IP window, one per-address window
    assert all(k.startswith(runtime.settings.ratelimit_prefix) for k in keys)
    assert any(runtime.hasher("private@example.org") in k for k in keys)
    assert not any("private" in k or "@" in k or "testclient" in k for k in keys)


def test_resend_counts_against_the_address(
    app: FastAPI, runtime: Runtime, memory: MemoryTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    limited = client_for(app)
    limited.post("/api/subscriptions", json={"email": "r@example.org", "trial": TRIAL})
    [sub] = subscriptions_of(runtime, "r@example.org")
    real = time.time
    with monkeypatch.context() as patch:
        patch.setattr(time, "time", lambda: real() - 8 * 86400)
        from alerts.tokens import Purpose

        token = runtime.signer.sign(Purpose.CONFIRM, sub.id)
    assert limited.post(f"/confirm/{token}/resend").status_code == 200  # second email of two
    over = limited.post(f"/confirm/{token}/resend", headers=HTML)
    assert over.status_code == 429
    assert "Retry-After" in over.headers
    assert len(memory.messages) == 2


def test_memory_storage_without_redis() -> None:
    settings = load_settings(env="test", secret_key=SECRET, redis_url=None)
    limiter = RateLimiter.from_settings(settings)
    limiter.hit("x", "1/minute", "k")
    with pytest.raises(RateLimited) as caught:
        limiter.hit("x", "1/minute", "k")
    assert 0 < caught.value.retry_after_s <= 60
    limiter.reset()
    limiter.hit("x", "1/minute", "k")


def test_redis_outage_lets_sign_ups_through() -> None:
    settings = load_settings(env="test", secret_key=SECRET, redis_url="redis://127.0.0.1:1/0")
    limiter = RateLimiter.from_settings(settings)
    for _ in range(3):
        limiter.hit("x", "1/minute", "k")  # logged, not raised


def test_limits_are_validated_settings() -> None:
    with pytest.raises(ConfigError, match="ALERTS_SIGNUP_PER_IP"):
        load_settings(env="test", secret_key=SECRET, signup_per_ip="twenty an hour")
    assert load_settings(env="test", secret_key=SECRET, confirm_per_address="5 per 2 days").confirm_per_address


@pytest.mark.parametrize("redis_url", [REDIS_URL, None], ids=["redis", "memory"])
def test_several_limits_in_one_call_count_as_one_by_one(redis_url: str | None) -> None:
    """``hit_all`` (one Lua script in Redis) stops at the first limit that is over, having counted the ones
    before it, and says when that limit's window frees; the same lists ``hit`` reads and writes."""
    import uuid

    settings = load_settings(
        env="test", secret_key=SECRET, redis_url=redis_url, ratelimit_prefix=f"test-rl-{uuid.uuid4().hex}"
    )
    limiter = RateLimiter.from_settings(settings)
    try:
        hits = [("ip", "2/minute", "client"), ("address", "1/hour", "someone")]
        limiter.hit_all(hits)
        with pytest.raises(RateLimited) as second:
            limiter.hit_all(hits)  # the IP takes it (its 2nd of 2), the address is over
        assert second.value.scope == "address" and 3500 < second.value.retry_after_s <= 3600
        with pytest.raises(RateLimited) as third:
            limiter.hit_all(hits)
        assert third.value.scope == "ip" and 0 < third.value.retry_after_s <= 60
        # The IP's window is full from the calls above (hit reads the same list); another address is not.
        with pytest.raises(RateLimited):
            limiter.hit("ip", "2/minute", "client")
        limiter.hit("address", "1/hour", "someone else")
    finally:
        limiter.reset()


def test_a_started_app_limits_sign_ups_in_redis_too(runtime: Runtime, inline: InlineEnqueue) -> None:
    """Started as uvicorn starts it: on PostgreSQL the sign-up counts its limits with the asyncio client and
    records through the link store; the limits and the answers are the same as on the threadpool path."""
    app = limited_app(runtime, inline, signup_per_ip="2/minute", confirm_per_address="5/day")
    try:
        with TestClient(app, raise_server_exceptions=False) as started:
            on_postgresql = runtime.engine.dialect.name == "postgresql"
            assert (app.state.linkstore is not None) == on_postgresql
            answers = [
                started.post("/api/subscriptions", json={"email": f"s{i}@example.org", "trial": TRIAL})
                for i in range(3)
            ]
            assert [a.status_code for a in answers] == [202, 202, 429]
            assert 0 < int(answers[2].headers["Retry-After"]) <= 60
            assert answers[2].json()["retry_after_s"] == int(answers[2].headers["Retry-After"])
        assert {s.status for s in subscriptions_of(runtime, "s0@example.org")} == {SubscriptionStatus.PENDING}
        assert subscriptions_of(runtime, "s2@example.org") == []
    finally:
        app.state.limiter.reset()
