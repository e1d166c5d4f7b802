"""The links in our emails: ``/confirm/{token}``, ``/unsubscribe/{token}``, ``/manage/{token}``.

GET and HEAD only ever show a page (mail scanners open links); changes need a POST. The unsubscribe URL
also takes RFC 8058 one-click POSTs (``List-Unsubscribe=One-Click``, urlencoded or multipart, no cookies),
answered 200 without a redirect. A bad or stale link gets a page that says what to do, never an error trace.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from alerts import linkstate, subscriptions
from alerts.db import transaction
from alerts.linkstate import LinkState
from alerts.models import Subscriber, Subscription, SubscriptionKind, SubscriptionStatus
from alerts.runtime import Runtime
from alerts.tokens import Purpose, TokenError
from alerts.web import pages
from alerts.web.deps import RuntimeDep
from alerts.web.linkstore import LinkStore
from alerts.web.ratelimit import CONFIRM_PER_ADDRESS, RateLimited, RateLimiter

log = structlog.get_logger("alerts.web.links")

router = APIRouter()

# Our tokens are well under this; anything longer is not worth verifying.
MAX_TOKEN_LENGTH = 400
GET_HEAD = ["GET", "HEAD"]


def _verify(runtime: Runtime, purpose: Purpose, token: str) -> int:
    if len(token) > MAX_TOKEN_LENGTH:
        raise TokenError("invalid")
    max_age = runtime.settings.confirm_max_age_s if purpose is Purpose.CONFIRM else None
    return runtime.signer.verify(purpose, token, max_age)


def _days(runtime: Runtime) -> int:
    return max(1, runtime.settings.confirm_max_age_s // 86400)


async def _read_form(request: Request) -> FormData:
    try:
        return await request.form(max_files=0, max_fields=20)
    except Exception:  # malformed bodies must not stop an unsubscribe
        return FormData()


def _field(form: FormData, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


def _no_longer_subscribed(request: Request) -> HTMLResponse:
    return pages.problem(
        request,
        410,
        "You unsubscribed from this alert",
        "This confirmation link belongs to an alert you turned off, so it can't switch it back on.",
        ["To get these alerts again, sign up again on the study page you came from."],
    )


# --- confirm ------------------------------------------------------------------------------------------


Endpoint = Callable[[Request], Awaitable[Response]]


def _link_route(path: str, methods: list[str]) -> Callable[[Endpoint], Endpoint]:
    """A plain Starlette route for what mail scanners and mail clients fetch at scale (the GET pages and the
    one-click POST): FastAPI's dependency solving and parameter validation were a third of such a page's
    time (benchmarks/README.md). The endpoint reads its token from ``request.path_params``."""

    def register(endpoint: Endpoint) -> Endpoint:
        router.add_route(path, endpoint, methods=methods, include_in_schema=False)
        return endpoint

    return register


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _store(request: Request) -> LinkStore:
    """One indexed read per page, no transaction: a GET of a link page writes nothing (alerts.linkstate)."""
    store: LinkStore = request.app.state.links
    return store


def _confirmed_page(request: Request, runtime: Runtime, state: LinkState, already: bool) -> HTMLResponse:
    context = {"what": state.what, "already": already, "manage_url": f"/manage/{state.manage_token}"}
    return pages.render(request, "confirmed.html", context)


async def _expired_confirm(request: Request, runtime: Runtime, token: str, error: TokenError) -> HTMLResponse:
    if error.reason != "expired" or error.payload_id is None:
        return pages.invalid_link(request)
    state = await _store(request).read(error.payload_id)
    if state is None:
        return pages.gone_link(request)
    if state.status == SubscriptionStatus.ACTIVE:
        return _confirmed_page(request, runtime, state, already=True)
    if state.status == SubscriptionStatus.UNSUBSCRIBED:
        return _no_longer_subscribed(request)
    context = {"what": state.what, "action": f"/confirm/{token}/resend", "days": _days(runtime)}
    return pages.render(request, "confirm_expired.html", context, status_code=410)


@_link_route("/confirm/{token}", GET_HEAD)
async def confirm_page(request: Request) -> Response:
    """Shows what is being confirmed and a Confirm button; never changes anything."""
    return await _confirm_page(request, request.path_params["token"], _runtime(request))


async def _confirm_page(request: Request, token: str, runtime: Runtime) -> Response:
    try:
        subscription_id = _verify(runtime, Purpose.CONFIRM, token)
    except TokenError as exc:
        return await _expired_confirm(request, runtime, token, exc)
    state = await _store(request).read(subscription_id)
    if state is None:
        return pages.gone_link(request)
    if state.status == SubscriptionStatus.ACTIVE:
        return _confirmed_page(request, runtime, state, already=True)
    if state.status == SubscriptionStatus.UNSUBSCRIBED:
        return _no_longer_subscribed(request)
    return pages.render(request, "confirm.html", {"what": state.what, "action": f"/confirm/{token}"})


@router.post("/confirm/{token}", include_in_schema=False, response_class=HTMLResponse)
async def confirm_submit(request: Request, token: str, runtime: RuntimeDep) -> Response:
    try:
        subscription_id = _verify(runtime, Purpose.CONFIRM, token)
    except TokenError as exc:
        return await _expired_confirm(request, runtime, token, exc)
    return await run_in_threadpool(_confirm, request, runtime, subscription_id)


def _confirm(request: Request, runtime: Runtime, subscription_id: int) -> Response:
    with transaction(runtime.engine) as session:
        before = linkstate.read_in(session.connection(), subscription_id)
        if before is not None and before.status == SubscriptionStatus.PENDING:
            subscriptions.confirm(session, subscription_id)
    if before is None:
        return pages.gone_link(request)
    if before.status == SubscriptionStatus.UNSUBSCRIBED:
        return _no_longer_subscribed(request)
    if before.status == SubscriptionStatus.PENDING:
        log.info("subscription.confirmed", subscription_id=subscription_id)
    return _confirmed_page(request, runtime, before, already=before.status == SubscriptionStatus.ACTIVE)


@router.post("/confirm/{token}/resend", include_in_schema=False, response_class=HTMLResponse)
async def confirm_resend(request: Request, token: str, runtime: RuntimeDep) -> Response:
    """A new confirmation email for a pending subscription whose link expired (per-address rate limit)."""
    try:
        subscription_id = _verify(runtime, Purpose.CONFIRM, token)
    except TokenError as exc:
        if exc.reason != "expired" or exc.payload_id is None:
            return pages.invalid_link(request)
        subscription_id = exc.payload_id
    else:
        # Still valid: nothing to resend, the link itself works.
        return await _confirm_page(request, token, runtime)
    return await run_in_threadpool(_resend, request, runtime, subscription_id)


def _resend(request: Request, runtime: Runtime, subscription_id: int) -> Response:
    limiter: RateLimiter = request.app.state.limiter
    try:
        with transaction(runtime.engine) as session:
            state = linkstate.read_in(session.connection(), subscription_id)
            pending = subscriptions.resend_confirmation(session, subscription_id)
            if pending is not None:
                limiter.hit(CONFIRM_PER_ADDRESS, runtime.settings.confirm_per_address, pending.subscriber.email_hash)
    except RateLimited as exc:
        log.info("confirmation.resend_rate_limited", subscription_id=subscription_id)
        return pages.rate_limited_page(request, exc.retry_after_s)
    if state is None:
        return pages.gone_link(request)
    if state.status == SubscriptionStatus.ACTIVE:
        return _confirmed_page(request, runtime, state, already=True)
    if pending is None:
        return _no_longer_subscribed(request)
    request.app.state.enqueue.send_confirmation(subscription_id)
    log.info("confirmation.resent", subscription_id=subscription_id)
    return pages.render(request, "confirm_resent.html", {"days": _days(runtime)})


# --- unsubscribe --------------------------------------------------------------------------------------


@_link_route("/unsubscribe/{token}", GET_HEAD)
async def unsubscribe_page(request: Request) -> Response:
    """Offers 'this alert' and 'all alerts'; never changes anything (the POST does)."""
    token, runtime = request.path_params["token"], _runtime(request)
    try:
        subscription_id = _verify(runtime, Purpose.UNSUBSCRIBE, token)
    except TokenError:
        return pages.invalid_link(request)
    state = await _store(request).read(subscription_id)
    if state is None:
        return pages.gone_link(request)
    context = {
        "what": state.what,
        "active": state.status != SubscriptionStatus.UNSUBSCRIBED,
        "others": state.others,
        "action": f"/unsubscribe/{token}",
        "manage_url": f"/manage/{state.manage_token}",
    }
    return pages.render(request, "unsubscribe.html", context)


@_link_route("/unsubscribe/{token}", ["POST"])
async def unsubscribe_submit(request: Request) -> Response:
    """One-click (RFC 8058) and the page's buttons: immediate, idempotent, 200 without a redirect."""
    token, runtime = request.path_params["token"], _runtime(request)
    form = await _read_form(request)
    try:
        subscription_id = _verify(runtime, Purpose.UNSUBSCRIBE, token)
    except TokenError:
        return pages.invalid_link(request)
    scope = "all" if _field(form, "scope") == "all" else "one"
    via = "one-click" if _field(form, "List-Unsubscribe") == "One-Click" else "page"
    # One statement on PostgreSQL: this is what every "unsubscribe" button of a mail client posts.
    state = await _store(request).unsubscribe(subscription_id, every=scope == "all")
    if state is None:
        # Erased or expired sign-up: nothing will be sent for this link, which is what was asked.
        log.info("subscription.unsubscribed", subscription_id=subscription_id, scope=scope, via=via, found=False)
        return pages.render(request, "unsubscribed.html", {"scope": scope, "what": None, "manage_url": None})
    log.info("subscription.unsubscribed", subscription_id=subscription_id, scope=scope, via=via, found=True)
    context = {"scope": scope, "what": state.what, "manage_url": f"/manage/{state.manage_token}"}
    return pages.render(request, "unsubscribed.html", context)


# --- manage -------------------------------------------------------------------------------------------

STATUS_LABELS = {
    SubscriptionStatus.ACTIVE: "Active",
    SubscriptionStatus.PENDING: "Waiting for you to confirm",
    SubscriptionStatus.UNSUBSCRIBED: "Unsubscribed",
}


@dataclass(frozen=True)
class Item:
    id: int
    name: str
    detail: str | None
    status: str
    status_label: str


def _items(listed: list[linkstate.Listed]) -> list[Item]:
    items = []
    for sub in listed:
        if sub.kind == SubscriptionKind.TRIAL:
            name = f"Changes to study {sub.target}"
            detail = sub.title
        else:
            name = f"New studies for {sub.label}"
            detail = None
        items.append(Item(sub.id, name, detail, sub.status, STATUS_LABELS.get(SubscriptionStatus(sub.status), "")))
    return items


def _manage_page(
    request: Request,
    token: str,
    listed: list[linkstate.Listed] | None,
    notice: str | None = None,
    erase_error: str | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    if listed is None:
        return pages.gone_link(request)
    items = _items(listed)
    context = {
        "items": items,
        "active_count": sum(1 for i in items if i.status != SubscriptionStatus.UNSUBSCRIBED),
        "base_action": f"/manage/{token}",
        "notice": notice,
        "erase_error": erase_error,
    }
    return pages.render(request, "manage.html", context, status_code=status_code)


def _subscriber_id(runtime: Runtime, token: str) -> int | None:
    """The subscriber behind a manage token, or None when the token is fine but the person was erased.

    Raises TokenError for a bad token.
    """
    subscriber_id = _verify(runtime, Purpose.MANAGE, token)
    with transaction(runtime.engine) as session:
        found = session.scalar(select(Subscriber.id).where(Subscriber.id == subscriber_id))
    return int(found) if found is not None else None


@_link_route("/manage/{token}", GET_HEAD)
async def manage_page(request: Request) -> Response:
    token, runtime = request.path_params["token"], _runtime(request)
    try:
        subscriber_id = _verify(runtime, Purpose.MANAGE, token)
    except TokenError:
        return pages.invalid_link(request)
    # One read answers both: the subscriptions, or that the person was erased (a friendly 404).
    return _manage_page(request, token, await _store(request).listed(subscriber_id))


@router.post("/manage/{token}/unsubscribe", include_in_schema=False, response_class=HTMLResponse)
async def manage_unsubscribe(request: Request, token: str, runtime: RuntimeDep) -> Response:
    form = await _read_form(request)
    return await run_in_threadpool(_manage_unsubscribe, request, token, runtime, form)


def _manage_unsubscribe(request: Request, token: str, runtime: Runtime, form: FormData) -> Response:
    try:
        subscriber_id = _subscriber_id(runtime, token)
    except TokenError:
        return pages.invalid_link(request)
    if subscriber_id is None:
        return pages.gone_link(request)
    notice = None
    with transaction(runtime.engine) as session:
        if _field(form, "scope") == "all":
            subscriptions.unsubscribe_all(session, subscriber_id)
            notice = "You're unsubscribed from all alerts."
            log.info("subscription.unsubscribed", subscriber_id=subscriber_id, scope="all", via="manage")
        elif _field(form, "subscription").isdigit():
            subscription = session.get(Subscription, int(_field(form, "subscription")))
            # Only the subscriber's own subscriptions, whatever id the form carries.
            if subscription is not None and subscription.subscriber_id == subscriber_id:
                subscriptions.unsubscribe(session, subscription.id)
                notice = f"You're unsubscribed from {subscriptions.describe(session, subscription)}."
                log.info("subscription.unsubscribed", subscription_id=subscription.id, scope="one", via="manage")
    return _manage_page(request, token, linkstate.listed(runtime.engine, subscriber_id), notice=notice)


@router.post("/manage/{token}/erase", include_in_schema=False, response_class=HTMLResponse)
async def manage_erase(request: Request, token: str, runtime: RuntimeDep) -> Response:
    form = await _read_form(request)
    return await run_in_threadpool(_manage_erase, request, token, runtime, form)


def _manage_erase(request: Request, token: str, runtime: Runtime, form: FormData) -> Response:
    try:
        subscriber_id = _subscriber_id(runtime, token)
    except TokenError:
        return pages.invalid_link(request)
    if subscriber_id is None:
        # Already erased (a double click): the outcome they asked for holds.
        return pages.render(request, "erased.html")
    if _field(form, "confirm") != "yes":
        return _manage_page(
            request,
            token,
            linkstate.listed(runtime.engine, subscriber_id),
            erase_error="Tick the box to confirm that you want everything deleted.",
            status_code=400,
        )
    with transaction(runtime.engine) as session:
        subscriptions.erase(session, subscriber_id)
    log.info("subscriber.erased", subscriber_id=subscriber_id)
    return pages.render(request, "erased.html")
