"""``POST /webhooks/sendgrid``: signed like SendGrid signs (ECDSA over timestamp + raw body), then queued."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient
from sqlalchemy import select

from alerts.db import transaction
from alerts.models import Suppression
from alerts.runtime import Runtime
from alerts.suppressions import address_hash
from alerts.web.webhooks import refusal
from tests.conftest import InlineEnqueue
from tests.support.sendgrid_standin import (
    SENDGRID_TEST_VECTOR,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    generate_webhook_keypair,
    sign_webhook,
)

URL = "/webhooks/sendgrid"


@pytest.fixture
def key(runtime: Runtime) -> ec.EllipticCurvePrivateKey:
    private_key, public_key = generate_webhook_keypair()
    runtime.settings.sendgrid_webhook_public_key = public_key
    runtime.settings.sendgrid_webhook_max_age_s = 600
    return private_key


def body(*events: dict[str, Any]) -> bytes:
    # As SendGrid posts it: compact JSON and a trailing CRLF, all of it signed.
    return json.dumps(list(events), separators=(",", ":")).encode() + b"\r\n"


SPAM = {"email": "a@example.org", "event": "spamreport", "sg_event_id": "spam-1", "timestamp": 1_800_000_000}


def suppressed(runtime: Runtime) -> set[str]:
    with transaction(runtime.engine) as session:
        return set(session.scalars(select(Suppression.email_hash)))


def post(client: TestClient, payload: bytes, headers: dict[str, str]) -> Any:
    return client.post(URL, content=payload, headers=headers | {"Content-Type": "application/json"})


def test_a_signed_post_is_queued_and_applied(
    client: TestClient, runtime: Runtime, inline: InlineEnqueue, key: ec.EllipticCurvePrivateKey
) -> None:
    payload = body(SPAM, {"email": "a@example.org", "event": "open", "sg_event_id": "open-1", "ip": "10.0.0.1"})
    response = post(client, payload, sign_webhook(key, payload))
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "queued", "events": 2}
    # Only the fields we apply are queued (no IPs, user agents...).
    assert inline.webhooks == [[SPAM, {"email": "a@example.org", "event": "open", "sg_event_id": "open-1"}]]
    assert suppressed(runtime) == {address_hash(runtime.hasher, "a@example.org")}


def test_tampered_unsigned_and_foreign_posts_are_refused(
    client: TestClient, runtime: Runtime, inline: InlineEnqueue, key: ec.EllipticCurvePrivateKey
) -> None:
    payload = body(SPAM)
    headers = sign_webhook(key, payload)
    tampered = payload.replace(b"a@example.org", b"b@example.org")
    assert post(client, tampered, headers).status_code == 403
    assert post(client, payload + b" ", headers).status_code == 403  # the raw bytes are what is signed
    assert post(client, payload, {}).status_code == 403
    assert post(client, payload, {SIGNATURE_HEADER: headers[SIGNATURE_HEADER]}).status_code == 403
    assert post(client, payload, headers | {SIGNATURE_HEADER: "bm90IGEgc2lnbmF0dXJl"}).status_code == 403
    assert post(client, payload, headers | {SIGNATURE_HEADER: "%%%"}).status_code == 403
    other, _ = generate_webhook_keypair()
    assert post(client, payload, sign_webhook(other, payload)).status_code == 403
    assert inline.webhooks == [] and suppressed(runtime) == set()


def test_stale_and_future_timestamps_are_refused(
    client: TestClient, runtime: Runtime, inline: InlineEnqueue, key: ec.EllipticCurvePrivateKey
) -> None:
    payload = body(SPAM)
    now = int(time.time())
    assert post(client, payload, sign_webhook(key, payload, str(now - 601))).status_code == 403
    assert post(client, payload, sign_webhook(key, payload, str(now + 3600))).status_code == 403
    assert post(client, payload, sign_webhook(key, payload, "yesterday")).status_code == 403
    assert post(client, payload, sign_webhook(key, payload, str(now - 590))).status_code == 200
    runtime.settings.sendgrid_webhook_max_age_s = 0  # age check off
    again = body(SPAM | {"sg_event_id": "spam-2"})
    assert post(client, again, sign_webhook(key, again, str(now - 86400 * 30))).status_code == 200


def test_without_a_configured_key_everything_is_refused(client: TestClient, runtime: Runtime) -> None:
    private_key, _ = generate_webhook_keypair()
    runtime.settings.sendgrid_webhook_public_key = None
    payload = body(SPAM)
    assert post(client, payload, sign_webhook(private_key, payload)).status_code == 403


def test_signed_but_malformed_bodies_are_bad_requests(
    client: TestClient, inline: InlineEnqueue, key: ec.EllipticCurvePrivateKey
) -> None:
    for payload in (b"not json", b'{"event": "bounce"}'):
        assert post(client, payload, sign_webhook(key, payload)).status_code == 400
    payload = b"[]"
    assert post(client, payload, sign_webhook(key, payload)).json() == {"status": "queued", "events": 0}
    assert inline.webhooks == []


def test_sendgrids_published_test_vector_verifies() -> None:
    v = SENDGRID_TEST_VECTOR
    raw = v["payload"].encode()
    assert refusal(raw, v["signature"], v["timestamp"], v["public_key"], max_age_s=0) is None
    assert refusal(raw, v["bad_signature"], v["timestamp"], v["public_key"], max_age_s=0) is not None
    assert refusal(raw, v["signature"], v["timestamp"], v["other_public_key"], max_age_s=0) is not None
    assert refusal(raw, v["signature"], str(int(v["timestamp"]) + 1), v["public_key"], max_age_s=0) is not None
    # The vector is from 2020: with the age check on, it is stale.
    assert "old" in (refusal(raw, v["signature"], v["timestamp"], v["public_key"], max_age_s=600) or "")
    # A key pasted as a PEM block works as well.
    pem = "-----BEGIN PUBLIC KEY-----\n" + v["public_key"] + "\n-----END PUBLIC KEY-----\n"
    assert refusal(raw, v["signature"], v["timestamp"], pem, max_age_s=0) is None


def test_the_test_vector_through_http_suppresses_the_dropped_address(client: TestClient, runtime: Runtime) -> None:
    v = SENDGRID_TEST_VECTOR
    runtime.settings.sendgrid_webhook_public_key = v["public_key"]
    runtime.settings.sendgrid_webhook_max_age_s = 0
    headers = {SIGNATURE_HEADER: v["signature"], TIMESTAMP_HEADER: v["timestamp"]}
    response = post(client, v["payload"].encode(), headers)
    assert response.status_code == 200, response.text
    # dropped, "Bounced Address": never email it again.
    assert suppressed(runtime) == {address_hash(runtime.hasher, "hello@world.com")}
