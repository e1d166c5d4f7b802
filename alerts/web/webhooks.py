"""``POST /webhooks/sendgrid``: SendGrid's Event Webhook (bounces, spam reports, unsubscribes...).

Verified, then queued: the signature (ECDSA over timestamp + raw body, checked with the library's
``EventWebhook``) must match ``ALERTS_SENDGRID_WEBHOOK_PUBLIC_KEY`` and the timestamp must be recent
(``ALERTS_SENDGRID_WEBHOOK_MAX_AGE_S``; 0 turns the age check off). Without a configured key the endpoint
refuses everything. The events are applied by the task ``alerts.webhooks.process_sendgrid``.
"""

from __future__ import annotations

import binascii
import json
import time
from functools import lru_cache
from typing import Any

import structlog
from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from alerts.pipeline import Enqueue
from alerts.web.deps import RuntimeDep
from alerts.webhooks import slim

router = APIRouter(tags=["webhooks"])
log = structlog.get_logger("alerts.web.webhooks")

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
MAX_BODY_BYTES = 16 * 1024 * 1024
# A timestamp ahead of our clock by more than this is refused too (a replay window opened in advance).
MAX_FUTURE_S = 300


class WebhookProblem(BaseModel):
    detail: str


class WebhookQueued(BaseModel):
    status: str = "queued"
    events: int


def _key_body(public_key: str) -> str:
    """The base64 key as SendGrid shows it; a PEM block pasted whole is accepted too."""
    lines = [line.strip() for line in public_key.strip().splitlines()]
    return "".join(line for line in lines if line and not line.startswith("-----"))


@lru_cache(maxsize=4)
def _verifier(public_key: str) -> Any:
    from sendgrid.helpers.eventwebhook import EventWebhook

    return EventWebhook(_key_body(public_key))


def refusal(
    raw: bytes,
    signature: str | None,
    timestamp: str | None,
    public_key: str | None,
    max_age_s: int,
    now: float | None = None,
) -> str | None:
    """Why a webhook request must be refused, or None when it is signed by SendGrid and recent enough."""
    if not public_key:
        return "no public key configured (ALERTS_SENDGRID_WEBHOOK_PUBLIC_KEY)"
    if not signature or not timestamp:
        return "signature or timestamp header missing"
    if not timestamp.isdigit() or len(timestamp) > 12:
        return "timestamp is not a Unix time"
    if max_age_s > 0:
        age = (time.time() if now is None else now) - int(timestamp)
        if age > max_age_s:
            return f"timestamp is {int(age)} s old (limit {max_age_s} s)"
        if -age > MAX_FUTURE_S:
            return "timestamp is in the future"
    try:
        verifier = _verifier(public_key)
    except (ValueError, TypeError) as exc:
        log.error("webhook.bad_public_key", error=type(exc).__name__)
        return "the configured public key cannot be read"
    try:
        payload = raw.decode("utf-8")
        valid = bool(verifier.verify_signature(payload, signature, timestamp))
    except (UnicodeDecodeError, binascii.Error, ValueError, TypeError):
        valid = False
    return None if valid else "signature does not match"


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise HTTPException(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE, "body too large")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise HTTPException(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE, "body too large")
        chunks.append(chunk)
    return b"".join(chunks)


@router.post(
    "/webhooks/sendgrid",
    status_code=200,
    response_model=WebhookQueued,
    responses={
        400: {"model": WebhookProblem, "description": "body is not a JSON array of events"},
        403: {
            "model": WebhookProblem,
            "description": "signature missing, invalid or stale, or no public key configured",
        },
        413: {"model": WebhookProblem, "description": "body larger than ALERTS_MAX_INGEST_BODY_BYTES"},
    },
    # Read by hand (the signature covers the raw bytes): documented here for clients and schema checks.
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "array", "items": {"type": "object"}}}},
        }
    },
    summary="SendGrid Event Webhook (signed): bounces, spam reports, unsubscribes, deliveries",
)
async def sendgrid_events(request: Request, runtime: RuntimeDep) -> WebhookQueued:
    settings = runtime.settings
    raw = await _read_body(request)
    problem = refusal(
        raw,
        request.headers.get(SIGNATURE_HEADER),
        request.headers.get(TIMESTAMP_HEADER),
        settings.sendgrid_webhook_public_key,
        settings.sendgrid_webhook_max_age_s,
    )
    if problem:
        log.warning("webhook.refused", provider="sendgrid", reason=problem)
        raise HTTPException(status.HTTP_403_FORBIDDEN, "signature missing, invalid or stale")
    try:
        data = json.loads(raw)
    except ValueError:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "body is not JSON") from None
    if not isinstance(data, list):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "body must be a JSON array of events")
    events = slim(data)
    if events:
        enqueue: Enqueue = request.app.state.enqueue
        await run_in_threadpool(enqueue.process_webhook, events)
    log.info("webhook.queued", provider="sendgrid", received=len(data), queued=len(events))
    return WebhookQueued(events=len(events))
