"""The links in our emails: ``/confirm/{token}``, ``/unsubscribe/{token}``, ``/manage/{token}``.

GET and HEAD only ever show a page (mail scanners open links); changes need a POST. The unsubscribe URL
also takes RFC 8058 one-click POSTs (``List-Unsubscribe=One-Click``, urlencoded or multipart, no cookies),
answered 200 without a redirect. A bad or stale link gets a page that says what to do, never an error trace.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route

from alerts import preferences, subscriptions
from alerts.db import transaction
from alerts.linkreads import ConfirmView, ManageView, Named, UnsubscribeView
from alerts.models import Subscriber, Subscription, SubscriptionKind, SubscriptionStatus
from alerts.preferences import InvalidPreference
from alerts.runtime import Runtime
from alerts.tokens import Purpose, TokenError
from alerts.web import linktokens, managepage, pages
from alerts.web import places as place_form
from alerts.web.deps import RuntimeDep
from alerts.web.digests import digest_context
from alerts.web.linkstore import LinkStore
from alerts.web.ratelimit import CONFIRM_PER_ADDRESS, RateLimited, RateLimiter

log = structlog.get_logger("alerts.web.links")

router = APIRouter()

GET_HEAD = ["GET", "HEAD"]


def _days(runtime: Runtime) -> int:
    return max(1, runtime.settings.confirm_max_age_s // 86400)


async def _read_form(request: Request) -> FormData:
    try:
        return await request.form(max_files=0, max_fields=20)
    except StarletteHTTPException as exc:
        if exc.status_code == 413:
            raise  # over the body limit (alerts.web.security): answered as such
        return FormData()
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
# A confirm token names every subscription one sign-up asked for (``alerts.tokens``): the page lists them
# and one click confirms those still waiting.


Pending = ConfirmView  # the token's subscriptions that still exist, their status and names


def _load(session: Session, subscription_ids: Sequence[int]) -> Pending | None:
    """The ORM path of ``alerts.linkreads.confirm_view`` (SQLite; the POSTs, in their transaction)."""
    found = [s for s in (session.get(Subscription, i) for i in subscription_ids) if s is not None]
    if not found:
        return None
    statuses = {s.status for s in found}
    status = next(
        (s for s in (SubscriptionStatus.PENDING, SubscriptionStatus.ACTIVE) if s in statuses),
        SubscriptionStatus.UNSUBSCRIBED,
    )
    shown = [s for s in found if s.status != SubscriptionStatus.UNSUBSCRIBED] or found
    return Pending(
        [s.id for s in found],
        status,
        [subscriptions.describe(session, s) for s in shown],
        found[0].subscriber.manage_token,
    )


def _confirmed_page(request: Request, runtime: Runtime, state: Pending, already: bool) -> HTMLResponse:
    context = {"items": state.items, "already": already, "manage_url": f"/manage/{state.manage_token}"}
    return pages.render(request, "confirmed.html", context)


def _confirm_answer(request: Request, runtime: Runtime, token: str, state: Pending | None, expired: bool) -> Response:
    """The confirm page for what the token names (GET/HEAD: shows, never changes anything)."""
    if state is None:
        return pages.gone_link(request)
    if state.status == SubscriptionStatus.ACTIVE:
        return _confirmed_page(request, runtime, state, already=True)
    if state.status == SubscriptionStatus.UNSUBSCRIBED:
        return _no_longer_subscribed(request)
    if expired:
        context = {"items": state.items, "action": f"/confirm/{token}/resend", "days": _days(runtime)}
        return pages.render(request, "confirm_expired.html", context, status_code=410)
    return pages.render(request, "confirm.html", {"items": state.items, "action": f"/confirm/{token}"})


def _expired_confirm(request: Request, runtime: Runtime, token: str, error: TokenError) -> Response:
    if error.reason != "expired" or not error.payload_ids:
        return pages.invalid_link(request)
    with transaction(runtime.engine) as session:
        state = _load(session, error.payload_ids)
    return _confirm_answer(request, runtime, token, state, expired=True)


def confirm_page(request: Request, token: str, runtime: Runtime) -> Response:
    """Shows what is being confirmed and a Confirm button; never changes anything (the ORM path)."""
    try:
        subscription_ids = linktokens.verify_confirm(runtime, token)
    except TokenError as exc:
        return _expired_confirm(request, runtime, token, exc)
    with transaction(runtime.engine) as session:
        state = _load(session, subscription_ids)
    return _confirm_answer(request, runtime, token, state, expired=False)


async def confirm_get(request: Request) -> Response:
    """``GET``/``HEAD /confirm/{token}``: one statement on PostgreSQL (``alerts.web.linkstore``)."""
    runtime, store, token = _link_request(request)
    if store is None:
        return await run_in_threadpool(confirm_page, request, token, runtime)
    expired = False
    try:
        subscription_ids = linktokens.verify_confirm(runtime, token)
    except TokenError as exc:
        if exc.reason != "expired" or not exc.payload_ids:
            return pages.invalid_link(request)
        subscription_ids, expired = exc.payload_ids, True
    return _confirm_answer(request, runtime, token, await store.confirm(subscription_ids), expired)


@router.post("/confirm/{token}", include_in_schema=False, response_class=HTMLResponse)
def confirm_submit(request: Request, token: str, runtime: RuntimeDep) -> Response:
    try:
        subscription_ids = linktokens.verify_confirm(runtime, token)
    except TokenError as exc:
        return _expired_confirm(request, runtime, token, exc)
    with transaction(runtime.engine) as session:
        before = _load(session, subscription_ids)
        if before is not None and before.status == SubscriptionStatus.PENDING:
            for subscription_id in before.ids:
                subscriptions.confirm(session, subscription_id)
    if before is None:
        return pages.gone_link(request)
    if before.status == SubscriptionStatus.UNSUBSCRIBED:
        return _no_longer_subscribed(request)
    if before.status == SubscriptionStatus.PENDING:
        log.info("subscription.confirmed", subscription_ids=before.ids)
    return _confirmed_page(request, runtime, before, already=before.status == SubscriptionStatus.ACTIVE)


@router.post("/confirm/{token}/resend", include_in_schema=False, response_class=HTMLResponse)
def confirm_resend(request: Request, token: str, runtime: RuntimeDep) -> Response:
    """A new confirmation email for the pending subscriptions of an expired link (per-address rate limit)."""
    try:
        linktokens.verify_confirm(runtime, token)
    except TokenError as exc:
        if exc.reason != "expired" or not exc.payload_ids:
            return pages.invalid_link(request)
        subscription_ids = exc.payload_ids
    else:
        # Still valid: nothing to resend, the link itself works.
        return confirm_page(request, token, runtime)
    limiter: RateLimiter = request.app.state.limiter
    try:
        with transaction(runtime.engine) as session:
            state = _load(session, subscription_ids)
            pending = [p for p in (subscriptions.resend_confirmation(session, i) for i in subscription_ids) if p]
            if pending:
                # One resend is one attempt, however many alerts the link names.
                limiter.hit(CONFIRM_PER_ADDRESS, runtime.settings.confirm_per_address, pending[0].subscriber.email_hash)
            pending_ids = [p.id for p in pending]
    except RateLimited as exc:
        log.info("confirmation.resend_rate_limited", subscription_ids=list(subscription_ids))
        return pages.rate_limited_page(request, exc.retry_after_s)
    if state is None:
        return pages.gone_link(request)
    if state.status == SubscriptionStatus.ACTIVE:
        return _confirmed_page(request, runtime, state, already=True)
    if not pending_ids:
        return _no_longer_subscribed(request)
    first, *also = pending_ids
    request.app.state.enqueue.send_confirmation(first, also)
    log.info("confirmation.resent", subscription_ids=pending_ids)
    return pages.render(request, "confirm_resent.html", {"days": _days(runtime)})


# --- unsubscribe --------------------------------------------------------------------------------------


def _other_active(session: Session, subscriber_id: int, subscription_id: int) -> int:
    return int(
        session.scalar(
            select(func.count())
            .select_from(Subscription)
            .where(
                Subscription.subscriber_id == subscriber_id,
                Subscription.id != subscription_id,
                Subscription.status != SubscriptionStatus.UNSUBSCRIBED,
            )
        )
        or 0
    )


def _unsubscribe_answer(request: Request, token: str, view: UnsubscribeView | None) -> Response:
    """Offers 'this alert' and 'all alerts'; never changes anything (the POST does)."""
    if view is None:
        return pages.gone_link(request)
    context = {
        "what": view.subscription.what,
        "active": view.subscription.status != SubscriptionStatus.UNSUBSCRIBED,
        "others": view.others,
        "action": f"/unsubscribe/{token}",
        "manage_url": f"/manage/{view.manage_token}",
    }
    return pages.render(request, "unsubscribe.html", context)


def _named(session: Session, subscription: Subscription) -> Named:
    what = subscriptions.shown(session, subscription)
    return Named(
        subscription.id,
        subscription.status,
        subscription.frequency,
        what,
        subscriptions.describe(session, subscription),
    )


def unsubscribe_page(request: Request, token: str, runtime: Runtime) -> Response:
    """The ORM path of the unsubscribe page (SQLite)."""
    try:
        subscription_id = linktokens.verify(runtime, Purpose.UNSUBSCRIBE, token)
    except TokenError:
        return pages.invalid_link(request)
    with transaction(runtime.engine) as session:
        subscription = session.get(Subscription, subscription_id)
        view = None
        if subscription is not None:
            others = _other_active(session, subscription.subscriber_id, subscription_id)
            view = UnsubscribeView(_named(session, subscription), subscription.subscriber.manage_token, others)
    return _unsubscribe_answer(request, token, view)


async def unsubscribe_get(request: Request) -> Response:
    """``GET``/``HEAD /unsubscribe/{token}``: what a scanner fetches; one statement on PostgreSQL."""
    runtime, store, token = _link_request(request)
    if store is None:
        return await run_in_threadpool(unsubscribe_page, request, token, runtime)
    try:
        subscription_id = linktokens.verify(runtime, Purpose.UNSUBSCRIBE, token)
    except TokenError:
        return pages.invalid_link(request)
    return _unsubscribe_answer(request, token, await store.unsubscribe(subscription_id))


async def unsubscribe_post(request: Request) -> Response:
    """One-click (RFC 8058) and the page's buttons: immediate, idempotent, 200 without a redirect."""
    runtime, store, token = _link_request(request)
    form = await _read_form(request)
    if store is None:
        return await run_in_threadpool(_unsubscribe, request, token, runtime, form)
    try:
        subscription_id = linktokens.verify(runtime, Purpose.UNSUBSCRIBE, token)
    except TokenError:
        return pages.invalid_link(request)
    scope, via = _unsubscribe_scope(form)
    view = await store.unsubscribe_now(subscription_id, everything=scope == "all")
    return _unsubscribed_answer(request, subscription_id, scope, via, view)


def _unsubscribe_scope(form: FormData) -> tuple[str, str]:
    scope = "all" if _field(form, "scope") == "all" else "one"
    via = "one-click" if _field(form, "List-Unsubscribe") == "One-Click" else "page"
    return scope, via


def _unsubscribed_answer(
    request: Request, subscription_id: int, scope: str, via: str, view: UnsubscribeView | None
) -> Response:
    found = view is not None
    log.info("subscription.unsubscribed", subscription_id=subscription_id, scope=scope, via=via, found=found)
    if view is None:
        # Erased or expired sign-up: nothing will be sent for this link, which is what was asked.
        return pages.render(request, "unsubscribed.html", {"scope": scope, "what": None, "manage_url": None})
    context = {"scope": scope, "what": view.subscription.what, "manage_url": f"/manage/{view.manage_token}"}
    return pages.render(request, "unsubscribed.html", context)


def _unsubscribe(request: Request, token: str, runtime: Runtime, form: FormData) -> Response:
    """The ORM path of the POST (SQLite)."""
    try:
        subscription_id = linktokens.verify(runtime, Purpose.UNSUBSCRIBE, token)
    except TokenError:
        return pages.invalid_link(request)
    scope, via = _unsubscribe_scope(form)
    with transaction(runtime.engine) as session:
        subscription = session.get(Subscription, subscription_id)
        view = None
        if subscription is not None:
            view = UnsubscribeView(_named(session, subscription), subscription.subscriber.manage_token, 0)
            if scope == "all":
                subscriptions.unsubscribe_all(session, subscription.subscriber_id)
            else:
                subscriptions.unsubscribe(session, subscription_id)
    return _unsubscribed_answer(request, subscription_id, scope, via, view)


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

    @property
    def in_sentence(self) -> str:
        """The name inside a sentence ("Unsubscribe from changes to study …"): its first letter lowered."""
        return self.name[:1].lower() + self.name[1:]


def _items(view: ManageView) -> list[Item]:
    items = []
    for sub in view.subscriptions:
        what = sub.shown
        if what.kind == SubscriptionKind.TRIAL:
            name, detail = f"Changes to study {what.name}", what.title
        else:
            name, detail = f"New studies for {what.name}", None
        items.append(Item(sub.id, name, detail, sub.status, STATUS_LABELS.get(SubscriptionStatus(sub.status), "")))
    return items


def _manage_view(session: Session, subscriber_id: int) -> ManageView | None:
    """The ORM path of ``alerts.linkreads.manage_view`` (SQLite; the manage page's POSTs)."""
    subscriber = session.get(Subscriber, subscriber_id)
    if subscriber is None:
        return None
    listed = subscriptions.list_subscriptions(session, subscriber_id)
    return ManageView(
        [_named(session, item.subscription) for item in listed],
        preferences.of(subscriber),
        subscriber.time_zone,
        subscriber.digest_hour,
        subscriber.digest_weekday,
    )


def _manage_answer(
    request: Request,
    token: str,
    view: ManageView | None,
    notice: str | None = None,
    erase_error: str | None = None,
    status_code: int = 200,
    errors: dict[str, str] | None = None,
    form: FormData | None = None,
    digest_error: str | None = None,
) -> HTMLResponse:
    if view is None:
        return pages.gone_link(request)
    context = _manage_context(request, token, view, notice, erase_error, errors, form, digest_error)
    if notice is None and erase_error is None and digest_error is None and not errors and form is None:
        # The page as a link shows it (what scanners fetch): filled into a skeleton of the same template.
        return pages.respond(request, managepage.body(pages.site_context(request) | context), status_code)
    return pages.render(request, "manage.html", context, status_code=status_code)


def _manage_context(
    request: Request,
    token: str,
    view: ManageView,
    notice: str | None = None,
    erase_error: str | None = None,
    errors: dict[str, str] | None = None,
    form: FormData | None = None,
    digest_error: str | None = None,
) -> dict[str, Any]:
    """What ``manage.html`` is rendered with (besides ``pages.site_context``)."""
    items = _items(view)
    # Each alert's frequency and when digests arrive (alerts.web.digests).
    frequencies = {sub.id: sub.frequency for sub in view.subscriptions}
    digests = digest_context(view.time_zone, view.digest_hour, view.digest_weekday, frequencies)
    return {
        "items": items,
        "active_count": sum(1 for i in items if i.status != SubscriptionStatus.UNSUBSCRIBED),
        "base_action": f"/manage/{token}",
        "notice": notice,
        "erase_error": erase_error,
        "errors": errors or {},
        "summary": view.chosen.describe(),
        "digest_error": digest_error,
        **digests,
    } | place_form.form_context(request, view.chosen, form)


def _manage_page(
    request: Request,
    runtime: Runtime,
    token: str,
    subscriber_id: int,
    notice: str | None = None,
    erase_error: str | None = None,
    status_code: int = 200,
    errors: dict[str, str] | None = None,
    form: FormData | None = None,
    digest_error: str | None = None,
) -> HTMLResponse:
    with transaction(runtime.engine) as session:
        view = _manage_view(session, subscriber_id)
    return _manage_answer(request, token, view, notice, erase_error, status_code, errors, form, digest_error)


render_manage_page = _manage_page


def manage_page(request: Request, token: str, runtime: Runtime) -> Response:
    """The ORM path of the manage page (SQLite)."""
    subscriber_id = linktokens.manage_subscriber(request, runtime, token)
    if isinstance(subscriber_id, Response):
        return subscriber_id
    return _manage_page(request, runtime, token, subscriber_id)


async def manage_get(request: Request) -> Response:
    """``GET``/``HEAD /manage/{token}``: the token alone names the subscriber; one statement reads the page."""
    runtime, store, token = _link_request(request)
    if store is None:
        return await run_in_threadpool(manage_page, request, token, runtime)
    try:
        subscriber_id = linktokens.verify(runtime, Purpose.MANAGE, token)
    except TokenError:
        return pages.invalid_link(request)
    return _manage_answer(request, token, await store.manage(subscriber_id))


# What a scanner burst and one-click unsubscribes hit: plain Starlette routes, matched before every FastAPI route
# (a FastAPI route with a dependency cost ~10 times the routing of a plain one, benchmarks/README.md).
# Installed by alerts.web.app; the other link routes (the pages' forms) stay on ``router``.
ROUTES = [
    Route("/confirm/{token}", confirm_get, methods=GET_HEAD, include_in_schema=False),
    Route("/unsubscribe/{token}", unsubscribe_get, methods=GET_HEAD, include_in_schema=False),
    Route("/unsubscribe/{token}", unsubscribe_post, methods=["POST"], include_in_schema=False),
    Route("/manage/{token}", manage_get, methods=GET_HEAD, include_in_schema=False),
]


def _link_request(request: Request) -> tuple[Runtime, LinkStore | None, str]:
    state = request.app.state
    return state.runtime, getattr(state, "linkstore", None), request.path_params["token"]


@router.post("/manage/{token}/unsubscribe", include_in_schema=False, response_class=HTMLResponse)
async def manage_unsubscribe(request: Request, token: str, runtime: RuntimeDep) -> Response:
    form = await _read_form(request)
    return await run_in_threadpool(_manage_unsubscribe, request, token, runtime, form)


def _manage_unsubscribe(request: Request, token: str, runtime: Runtime, form: FormData) -> Response:
    subscriber_id = linktokens.manage_subscriber(request, runtime, token)
    if isinstance(subscriber_id, Response):
        return subscriber_id
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
    return _manage_page(request, runtime, token, subscriber_id, notice=notice)


@router.post("/manage/{token}/preferences", include_in_schema=False, response_class=HTMLResponse)
async def manage_preferences(request: Request, token: str, runtime: RuntimeDep) -> Response:
    form = await _read_form(request)
    return await run_in_threadpool(_manage_preferences, request, token, runtime, form)


def _manage_preferences(request: Request, token: str, runtime: Runtime, form: FormData) -> Response:
    """Replace the subscriber's place, distance, age and sex (every field optional; blank clears it)."""
    subscriber_id = linktokens.manage_subscriber(request, runtime, token)
    if isinstance(subscriber_id, Response):
        return subscriber_id
    try:
        chosen = place_form.from_form(form)
    except InvalidPreference as exc:
        return _manage_page(
            request, runtime, token, subscriber_id, errors={exc.field: str(exc)}, status_code=422, form=form
        )
    with transaction(runtime.engine) as session:
        preferences.set_preferences(session, subscriber_id, chosen)
    log.info("preferences.changed", subscriber_id=subscriber_id, via="manage")  # never the values
    return _manage_page(request, runtime, token, subscriber_id, notice="Your choices are saved.")


@router.post("/manage/{token}/erase", include_in_schema=False, response_class=HTMLResponse)
async def manage_erase(request: Request, token: str, runtime: RuntimeDep) -> Response:
    form = await _read_form(request)
    return await run_in_threadpool(_manage_erase, request, token, runtime, form)


def _manage_erase(request: Request, token: str, runtime: Runtime, form: FormData) -> Response:
    try:
        subscriber_id = linktokens.subscriber_id(runtime, token)
    except TokenError:
        return pages.invalid_link(request)
    if subscriber_id is None:
        # Already erased (a double click): the outcome they asked for holds.
        return pages.render(request, "erased.html")
    if _field(form, "confirm") != "yes":
        return _manage_page(
            request,
            runtime,
            token,
            subscriber_id,
            erase_error="Tick the box to confirm that you want everything deleted.",
            status_code=400,
        )
    with transaction(runtime.engine) as session:
        subscriptions.erase(session, subscriber_id)
    log.info("subscriber.erased", subscriber_id=subscriber_id)
    return pages.render(request, "erased.html")
