"""Transports built from settings, and the send retry schedule."""

from __future__ import annotations

import pytest

from alerts.config import Settings
from alerts.pipeline import backoff_seconds
from alerts.transports import build_transport
from alerts.transports.sendgrid import SendGridTransport
from tests.support.sendgrid_standin import SendGridStandIn
from tests.transports.conftest import API_KEY, make_batch


def test_sendgrid_backend_from_settings(standin: SendGridStandIn) -> None:
    settings = Settings(
        email_backend="sendgrid",
        sendgrid_api_key=API_KEY,
        sendgrid_host=standin.url,
        sendgrid_timeout_s=3.5,
        send_lease_s=100,
    )
    transport = build_transport(settings)
    assert isinstance(transport, SendGridTransport)
    assert transport._client.client.timeout == 3.5, "the library has no timeout of its own"
    assert transport.budget_s == 50, "a batch finishes well within its claim lease"
    assert {r.outcome.value for r in transport.send(make_batch(2))} == {"sent"}
    assert standin.emails_accepted == 2


def test_sendgrid_backend_needs_a_key() -> None:
    with pytest.raises(ValueError, match="SENDGRID_API_KEY"):
        Settings(email_backend="sendgrid")


def test_backoff_doubles_from_the_configured_base_and_respects_the_provider() -> None:
    for retries, low, high in [(0, 0.1, 0.2), (1, 0.2, 0.4), (3, 0.8, 1.6)]:
        assert low <= backoff_seconds(retries, base=0.2) <= high
    assert 8 <= backoff_seconds(3) <= 16  # default base 2 s
    assert backoff_seconds(20) <= 300
    assert backoff_seconds(0, retry_after_s=30, base=0.2) == 30
    assert Settings().send_retry_base_s == 2.0
