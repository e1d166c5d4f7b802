"""Fixtures for transport tests: SendGrid's stand-in on 127.0.0.1, driven through the official client."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from alerts.rendering import Content
from alerts.sending import alert_headers
from alerts.transports.base import Batch, Recipient
from alerts.transports.sendgrid import SendGridTransport
from tests.support.sendgrid_standin import SendGridStandIn

API_KEY = "SG.test-key-for-the-stand-in"


@pytest.fixture
def standin() -> Iterator[SendGridStandIn]:
    with SendGridStandIn(api_keys=[API_KEY]) as server:
        yield server


@pytest.fixture
def sendgrid(standin: SendGridStandIn) -> SendGridTransport:
    return SendGridTransport(API_KEY, standin.url, timeout_s=5.0)


CONTENT = Content(
    subject="New trial for Herniated Disc",
    text="A new study.\nUnsubscribe: %%unsubscribe_url%%\nManage: %%manage_url%%\n",
    html='<p>A new study.</p><a href="%%unsubscribe_url%%">Unsubscribe</a> <a href="%%manage_url%%">Manage</a>',
)


def recipient(i: int, email: str | None = None) -> Recipient:
    return Recipient(
        delivery_id=i,
        email=email or f"person{i}@example.org",
        values={
            "unsubscribe_url": f"https://alerts.example.org/unsubscribe/tok-{i}",
            "manage_url": f"https://alerts.example.org/manage/tok-{i}",
        },
        message_id=f"<delivery-{i}@alerts.example.org>",
    )


def make_batch(n: int = 3, start: int = 1, recipients: list[Recipient] | None = None) -> Batch:
    return Batch(
        content=CONTENT,
        recipients=recipients if recipients is not None else [recipient(i) for i in range(start, start + n)],
        from_email="alerts@alerts.example.org",
        from_name="Trial alerts",
        headers=alert_headers(),
    )
