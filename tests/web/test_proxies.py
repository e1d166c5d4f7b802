"""Whose X-Forwarded-For counts: only ALERTS_TRUSTED_PROXIES' (default none), so nobody picks their own
per-IP bucket, and behind the proxy each visitor has their own."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from fastapi.testclient import TestClient

from alerts.config import ConfigError, load_settings
from alerts.runtime import Runtime
from alerts.web import create_app
from tests.conftest import SECRET, InlineEnqueue

TRIAL = "NCT06740149"
_n = itertools.count()


def client_at(runtime: Runtime, inline: InlineEnqueue, host: str, proxies: tuple[str, ...]) -> TestClient:
    runtime.settings = runtime.settings.model_copy(update={"trusted_proxies": proxies, "signup_per_ip": "2/minute"})
    return TestClient(create_app(runtime, enqueue=inline), client=(host, 40000))


def sign_up(client: TestClient, forwarded_for: str | None) -> int:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    body = {"email": f"p{next(_n)}@example.org", "trial": TRIAL}
    return int(client.post("/api/subscriptions", json=body, headers=headers).status_code)


def test_by_default_a_client_cannot_choose_its_bucket(runtime: Runtime, inline: InlineEnqueue) -> None:
    client = client_at(runtime, inline, "127.0.0.1", ())
    codes = [sign_up(client, f"198.51.100.{i}") for i in range(3)]
    assert codes == [202, 202, 429]  # every forged address counted as the one that connected


def test_behind_a_trusted_proxy_each_visitor_has_a_bucket(runtime: Runtime, inline: InlineEnqueue) -> None:
    proxy = client_at(runtime, inline, "10.0.0.2", ("10.0.0.0/8",))
    assert [sign_up(proxy, "203.0.113.5") for _ in range(3)] == [202, 202, 429]
    assert sign_up(proxy, "203.0.113.6") == 202  # another visitor, another bucket
    # A client prepending its own address does not escape: the proxy appended the real one, which counts.
    assert sign_up(proxy, "192.0.2.77, 203.0.113.5") == 429
    # Chains of trusted proxies are walked from the right to the first untrusted address.
    assert sign_up(proxy, "203.0.113.6, 10.9.9.9") == 202
    assert sign_up(proxy, "203.0.113.6, 10.9.9.9") == 429


def test_an_untrusted_client_is_its_own_address(runtime: Runtime, inline: InlineEnqueue) -> None:
    direct = client_at(runtime, inline, "192.0.2.10", ("10.0.0.0/8",))
    assert [sign_up(direct, f"203.0.113.{i}") for i in range(3)] == [202, 202, 429]


def test_alerts_web_leaves_forwarded_headers_to_the_app(monkeypatch: pytest.MonkeyPatch) -> None:
    """uvicorn's own proxy-header handling trusts loopback by default: ``alerts web`` turns it off."""
    import uvicorn

    from alerts import cli

    seen: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: seen.update(kwargs))
    monkeypatch.setattr(cli, "_runtime", lambda: None)
    cli.web(host="127.0.0.1", port=8000, workers=1)
    assert seen["proxy_headers"] is False


@pytest.mark.parametrize("value", ["localhost", "10.0.0.0/33", "10.0.0.1;", "*"])
def test_trusted_proxies_are_validated(value: str) -> None:
    settings = load_settings(secret_key=SECRET, trusted_proxies="10.0.0.0/8, 172.18.0.5 ::1")
    assert settings.trusted_proxies == ("10.0.0.0/8", "172.18.0.5", "::1")
    with pytest.raises(ConfigError, match="ALERTS_TRUSTED_PROXIES"):
        load_settings(secret_key=SECRET, trusted_proxies=value)
