"""Digest links and choices: the RFC 8058 one-click link of a digest, the whole digest's page, and the
manage page's digest forms.

``/digest/{token}``: the whole digest (an email leaves out what does not fit its byte budget and links
here, ``alerts.digests.assemble``). The token is the digest's own (the one its one-click link carries):
it names a digest, never a person. GET only shows; the stop links it offers lead to the usual
confirmation pages, and its "stop every alert in this digest" link to the one-click page below.

``/unsubscribe/digest/{token}``: a digest's ``List-Unsubscribe`` target. GET shows which alerts it would
end (mail scanners open links; nothing changes); POST (one-click, or the page's button) ends every
subscription whose entries that digest showed, and the page says which. The manage page offers the finer
choice: each alert's frequency, and when digests arrive.
"""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from alerts import subscriptions
from alerts.db import transaction
from alerts.digests.preferences import (
    FREQUENCY_LABELS,
    WEEKDAYS,
    DigestPreferences,
    InvalidPreference,
    form_context,
    set_frequency,
    set_preferences,
)
from alerts.digests.send import carried_by
from alerts.digests.view import whole_digest
from alerts.models import Digest, HeldItem, Subscriber, Subscription, SubscriptionStatus
from alerts.runtime import Runtime
from alerts.tokens import Purpose, TokenError
from alerts.web import linktokens, pages
from alerts.web.deps import RuntimeDep

log = structlog.get_logger("alerts.web.digests")

router = APIRouter()


async def _read_form(request: Request) -> FormData:
    try:
        return await request.form(max_files=0, max_fields=20)
    except Exception:  # malformed bodies must not stop an unsubscribe
        return FormData()


def _digest_id(runtime: Runtime, token: str) -> int:
    return linktokens.verify(runtime, Purpose.DIGEST, token)


def _carried(session: Session, digest: Digest) -> list[Subscription]:
    """The subscriptions whose held items the digest carried (items never change: the same ones it sent)."""
    ids = (
        select(HeldItem.subscription_id)
        .join(Digest, carried_by())
        .where(Digest.id == digest.id)
        .distinct()
        .scalar_subquery()
    )
    return list(session.scalars(select(Subscription).where(Subscription.id.in_(ids)).order_by(Subscription.id)))


@router.api_route(
    "/unsubscribe/digest/{token}", methods=["GET", "HEAD"], include_in_schema=False, response_class=HTMLResponse
)
def digest_unsubscribe_page(request: Request, token: str, runtime: RuntimeDep) -> Response:
    """Shows what the one-click link ends; never changes anything (the POST does)."""
    try:
        digest_id = _digest_id(runtime, token)
    except TokenError:
        return pages.invalid_link(request)
    with transaction(runtime.engine) as session:
        digest = session.get(Digest, digest_id)
        if digest is None or digest.subscriber_id is None:
            return pages.gone_link(request)
        carried = _carried(session, digest)
        context = {
            "whats": [
                subscriptions.describe(session, s) for s in carried if s.status != SubscriptionStatus.UNSUBSCRIBED
            ],
            "action": f"/unsubscribe/digest/{token}",
            "manage_url": f"/manage/{session.get(Subscriber, digest.subscriber_id).manage_token}",  # type: ignore[union-attr]
        }
    return pages.render(request, "digest_unsubscribe.html", context)


@router.api_route("/digest/{token}", methods=["GET", "HEAD"], include_in_schema=False, response_class=HTMLResponse)
def digest_page(request: Request, token: str, runtime: RuntimeDep) -> Response:
    """Every entry of one digest, with the same stop links as the email; never changes anything."""
    try:
        digest_id = _digest_id(runtime, token)
    except TokenError:
        return pages.invalid_link(request)
    with transaction(runtime.engine) as session:
        whole = whole_digest(session, digest_id, lambda stop: f"/unsubscribe/{stop}")
    if whole is None:
        return pages.gone_link(request)
    context = {
        "subject": whole.subject,
        "entries_html": whole.html,
        "entries": whole.entries,
        "unsubscribe_url": f"/unsubscribe/digest/{token}",
        "manage_url": f"/manage/{whole.manage_token}",
    }
    return pages.render(request, "digest.html", context)


@router.post("/unsubscribe/digest/{token}", include_in_schema=False, response_class=HTMLResponse)
async def digest_unsubscribe_submit(request: Request, token: str, runtime: RuntimeDep) -> Response:
    """One-click (RFC 8058) and the page's button: immediate, idempotent, 200 without a redirect."""
    form = await _read_form(request)
    return await run_in_threadpool(_digest_unsubscribe, request, token, runtime, form)


def _digest_unsubscribe(request: Request, token: str, runtime: Runtime, form: FormData) -> Response:
    try:
        digest_id = _digest_id(runtime, token)
    except TokenError:
        return pages.invalid_link(request)
    value = form.get("List-Unsubscribe")
    via = "one-click" if isinstance(value, str) and value.strip() == "One-Click" else "page"
    with transaction(runtime.engine) as session:
        digest = session.get(Digest, digest_id)
        subscriber = session.get(Subscriber, digest.subscriber_id) if digest and digest.subscriber_id else None
        if digest is None or subscriber is None:
            # Erased: nothing will be sent for this link, which is what was asked.
            log.info("digest.unsubscribed", digest_id=digest_id, via=via, found=False)
            return pages.render(request, "digest_unsubscribed.html", {"whats": [], "manage_url": None})
        carried = _carried(session, digest)
        whats = [subscriptions.describe(session, s) for s in carried]
        for subscription in carried:
            subscriptions.unsubscribe(session, subscription.id)
        manage_url = f"/manage/{subscriber.manage_token}"
    log.info("digest.unsubscribed", digest_id=digest_id, via=via, found=True, subscriptions=[s.id for s in carried])
    return pages.render(request, "digest_unsubscribed.html", {"whats": whats, "manage_url": manage_url})


# --- the manage page's digest choices -----------------------------------------------------------------


def digest_context(time_zone: str, hour: int, weekday: int, frequencies: dict[int, str]) -> dict[str, Any]:
    """What manage.html shows of digests: each alert's frequency and when digests arrive (values already read)."""
    when = f"{hour:02d}:00, {time_zone}; weekly on {WEEKDAYS[weekday]}s"
    return form_context(None, time_zone, hour, weekday) | {
        "frequencies": frequencies,
        "frequency_labels": FREQUENCY_LABELS,
        "digest_when": when,
    }


@router.post("/manage/{token}/digest", include_in_schema=False, response_class=HTMLResponse)
async def manage_digest(request: Request, token: str, runtime: RuntimeDep) -> Response:
    form = await _read_form(request)
    return await run_in_threadpool(_manage_digest, request, token, runtime, form)


def _manage_digest(request: Request, token: str, runtime: Runtime, form: FormData) -> Response:
    """Either one alert's frequency (``subscription`` + ``frequency``) or the digest time (zone, hour, weekday)."""
    from alerts.web.links import render_manage_page

    subscriber_id = linktokens.manage_subscriber(request, runtime, token)
    if isinstance(subscriber_id, Response):
        return subscriber_id
    subscription_field = form.get("subscription")
    try:
        with transaction(runtime.engine) as session:
            if isinstance(subscription_field, str) and subscription_field.isdigit():
                subscription = session.get(Subscription, int(subscription_field))
                # Only the subscriber's own subscriptions, whatever id the form carries.
                if subscription is None or subscription.subscriber_id != subscriber_id:
                    return render_manage_page(request, runtime, token, subscriber_id)
                frequency = form.get("frequency")
                set_frequency(session, subscription.id, frequency if isinstance(frequency, str) else "")
                what = subscriptions.describe(session, subscription)
                notice = f"{what[:1].upper()}{what[1:]}: {FREQUENCY_LABELS[subscription.frequency].lower()}."
            else:
                set_preferences(session, subscriber_id, DigestPreferences.from_form(form))
                notice = "Saved: daily and weekly emails will come at the time you chose."
    except InvalidPreference as exc:
        return render_manage_page(
            request, runtime, token, subscriber_id, digest_error=f"That can't be used: {exc}.", status_code=400
        )
    log.info("digest.preferences_changed", subscriber_id=subscriber_id)
    return render_manage_page(request, runtime, token, subscriber_id, notice=notice)
