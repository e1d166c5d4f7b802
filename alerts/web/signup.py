"""Sign-up: ``POST /api/subscriptions`` (JSON) and the HTML form at ``/subscribe`` (embeddable on a trial page).

Whatever the address (new, pending, already following), the answer is the same, so nobody can learn who
subscribes to what. The confirmation email is queued only after the sign-up commits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, Field, field_validator, model_validator
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from alerts import subscriptions
from alerts.addresses import InvalidAddress, normalize_email
from alerts.db import transaction
from alerts.digests.preferences import DigestChoice, InvalidPreference, form_context_from, parse_time_zone
from alerts.models import Trial
from alerts.runtime import Runtime
from alerts.subscriptions import InvalidTarget, Target
from alerts.web import pages
from alerts.web.deps import RuntimeDep
from alerts.web.ratelimit import CONFIRM_PER_ADDRESS, SIGNUP_PER_IP, RateLimited, RateLimiter

log = structlog.get_logger("alerts.web.signup")

router = APIRouter(tags=["subscriptions"])

MAX_OFFERED_CONDITIONS = 5
CHECK_YOUR_EMAIL = (
    "Check your inbox: if this is a new alert, a confirmation link is on its way. "
    "Nothing is sent until the link is clicked."
)


class SignupRequest(BaseModel):
    """Follow one trial or one condition. Exactly one of ``trial`` and ``condition``."""

    email: str = Field(
        max_length=320,
        description="The subscriber's address (syntax-checked, never echoed)",
        json_schema_extra={"format": "email"},
    )
    trial: str | None = Field(
        default=None, max_length=20, description="NCT ID of a study to follow", examples=["NCT06740149"]
    )
    condition: str | None = Field(
        default=None, max_length=300, description="A condition: be told about new studies for it"
    )
    frequency: Literal["immediately", "daily", "weekly"] | None = Field(
        default=None, description="An email per change (immediately, the default), or a daily or weekly digest"
    )
    time_zone: str | None = Field(
        default=None, max_length=64, description="IANA time zone of digests, e.g. Europe/Paris (default UTC)"
    )
    digest_hour: int | None = Field(default=None, ge=0, le=23, description="Local hour of digests (default 8)")
    digest_weekday: int | None = Field(
        default=None, ge=0, le=6, description="Day of weekly digests, 0 = Monday (the default) to 6 = Sunday"
    )

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        try:
            return normalize_email(value)
        except InvalidAddress as exc:
            raise ValueError(str(exc)) from None

    @field_validator("trial")
    @classmethod
    def _trial(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return subscriptions.trial_target(value).key
        except InvalidTarget as exc:
            raise ValueError(str(exc)) from None

    @field_validator("condition")
    @classmethod
    def _condition(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return subscriptions.condition_target(value).label
        except InvalidTarget as exc:
            raise ValueError(str(exc)) from None

    @field_validator("time_zone")
    @classmethod
    def _time_zone(cls, value: str | None) -> str | None:
        try:
            return parse_time_zone(value) if value is not None else None
        except InvalidPreference as exc:
            raise ValueError(str(exc)) from None

    def digest(self) -> DigestChoice:
        return DigestChoice.parse(self.frequency, self.time_zone, self.digest_hour, self.digest_weekday)

    @model_validator(mode="after")
    def _exactly_one(self) -> SignupRequest:
        if (self.trial is None) == (self.condition is None):
            raise ValueError("give exactly one of 'trial' and 'condition'")
        return self

    def target(self) -> Target:
        if self.trial is not None:
            return subscriptions.trial_target(self.trial)
        return subscriptions.condition_target(self.condition or "")


class SignupAccepted(BaseModel):
    status: Literal["check-your-email"] = "check-your-email"
    message: str = CHECK_YOUR_EMAIL


class BadBody(BaseModel):
    detail: str = "There was an error parsing the body"


class TooManyRequests(BaseModel):
    detail: str = "too many requests; try again later"
    retry_after_s: int = Field(description="Seconds to wait; also in the Retry-After header")


def client_key(runtime: Runtime, request: Request) -> str:
    """The client IP as a keyed hash (behind a proxy, uvicorn's --proxy-headers gives the real client)."""
    host = request.client.host if request.client else "unknown"
    return runtime.hasher(f"ip:{host}")


def perform_signup(
    runtime: Runtime,
    limiter: RateLimiter,
    enqueue: Any,
    address: str,
    targets: list[Target],
    ip_key: str,
    digest: DigestChoice | None = None,
) -> None:
    """Sign ``address`` up for ``targets`` and queue the confirmations. Raises RateLimited.

    The per-address limit counts every attempt, whether or not it leads to an email: counting only
    confirmation emails would answer 429 for a new address but 202 for an active one, telling a stranger
    whether someone is subscribed.
    """
    settings = runtime.settings
    limiter.hit(SIGNUP_PER_IP, settings.signup_per_ip, ip_key)
    limiter.hit(CONFIRM_PER_ADDRESS, settings.confirm_per_address, runtime.hasher(address), len(targets))
    to_confirm: list[int] = []
    for attempt in range(3):
        try:
            with transaction(runtime.engine) as session:
                choice = digest or DigestChoice()
                outcomes = [
                    subscriptions.sign_up(
                        session,
                        address,
                        target,
                        runtime.signer,
                        runtime.hasher,
                        frequency=choice.frequency,
                        preferences=choice.preferences,
                    )
                    for target in targets
                ]
                to_confirm = [o.subscription_id for o in outcomes if o.needs_confirmation]
            break
        except IntegrityError:
            # Two sign-ups for one new address raced; the loser finds the winner's rows next time.
            if attempt == 2:
                raise
    log.info(
        "signup.accepted",
        subscriptions=[o.subscription_id for o in outcomes],
        confirmations=len(to_confirm),
    )
    for subscription_id in to_confirm:
        enqueue.send_confirmation(subscription_id)


def _limiter(request: Request) -> RateLimiter:
    limiter: RateLimiter = request.app.state.limiter
    return limiter


def _too_many_json(exc: RateLimited) -> JSONResponse:
    body = TooManyRequests(retry_after_s=exc.retry_after_s)
    return JSONResponse(body.model_dump(), status_code=429, headers={"Retry-After": str(exc.retry_after_s)})


@router.post(
    "/api/subscriptions",
    status_code=202,
    response_model=SignupAccepted,
    summary="Sign up for an alert (double opt-in)",
    description=(
        "Creates a pending subscription and emails a confirmation link. The answer is the same whether or "
        "not the address is already subscribed. Re-submitting never downgrades an active subscription."
    ),
    responses={
        400: {"model": BadBody, "description": "the body cannot be read (not UTF-8, not JSON)"},
        429: {
            "model": TooManyRequests,
            "description": "too many sign-ups from this client, or confirmation emails to this address",
            "headers": {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}},
        },
    },
)
def create_subscription(body: SignupRequest, request: Request, runtime: RuntimeDep) -> Any:
    try:
        perform_signup(
            runtime,
            _limiter(request),
            request.app.state.enqueue,
            body.email,
            [body.target()],
            client_key(runtime, request),
            body.digest(),
        )
    except RateLimited as exc:
        log.info("signup.rate_limited", scope=exc.scope)
        return _too_many_json(exc)
    return SignupAccepted()


# --- the HTML form -------------------------------------------------------------------------------------


@dataclass
class Offer:
    label: str
    checked: bool


@dataclass
class TrialOffer:
    nct_id: str
    title: str | None
    checked: bool


def _trial_title(runtime: Runtime, nct_id: str) -> str | None:
    with transaction(runtime.engine) as session:
        return session.scalar(select(Trial.title).where(Trial.nct_id == nct_id))


def _form_page(
    request: Request,
    runtime: Runtime,
    *,
    offered_trial: str | None,
    offered_conditions: list[str],
    chosen_trial: str | None = None,
    chosen_conditions: list[str] | None = None,
    typed_trial: str = "",
    typed_condition: str = "",
    errors: dict[str, str] | None = None,
    status_code: int = 200,
    form: FormData | None = None,
) -> HTMLResponse:
    first_visit = chosen_conditions is None
    trial_offer = None
    if offered_trial:
        checked = first_visit or chosen_trial == offered_trial
        trial_offer = TrialOffer(offered_trial, _trial_title(runtime, offered_trial), checked)
    if first_visit:
        # From a trial page the study is pre-selected and its conditions are extra choices; a lone
        # condition is pre-selected.
        chosen = set(offered_conditions) if not offered_trial and len(offered_conditions) == 1 else set()
    else:
        chosen = set(chosen_conditions or [])
    condition_offers = [Offer(label, label in chosen) for label in offered_conditions]
    context = {
        "offered_trial": trial_offer,
        "offered_conditions": condition_offers,
        "typed_trial": typed_trial,
        "typed_condition": typed_condition,
        "errors": errors or {},
        # Digest choices (alerts.digests.preferences), kept as typed when the form comes back with errors.
        **form_context_from(form),
    }
    return pages.render(request, "subscribe.html", context, status_code=status_code, embeddable=True)


def _clean_offers(trial: str | None, conditions: list[str]) -> tuple[str | None, list[str], dict[str, str]]:
    """Valid offered trial and conditions (invalid ones are dropped, with an error for the trial)."""
    errors: dict[str, str] = {}
    offered_trial = None
    if trial and trial.strip():
        try:
            offered_trial = subscriptions.trial_target(trial).key
        except InvalidTarget:
            errors["trial"] = "That study number doesn't look right: it's NCT followed by 8 digits."
    labels: list[str] = []
    for phrase in conditions:
        try:
            label = subscriptions.condition_target(phrase).label
        except InvalidTarget:
            continue
        if label not in labels:
            labels.append(label)
    return offered_trial, labels[:MAX_OFFERED_CONDITIONS], errors


@router.api_route("/subscribe", methods=["GET", "HEAD"], include_in_schema=False, response_class=HTMLResponse)
def subscribe_form(request: Request, runtime: RuntimeDep) -> Response:
    params = request.query_params
    trial = params.get("trial")
    offered_trial, offered_conditions, errors = _clean_offers(trial, params.getlist("condition"))
    if errors:
        # A bad study number in the embed link: show the open form with the problem, not a dead end.
        return _form_page(
            request,
            runtime,
            offered_trial=None,
            offered_conditions=[],
            typed_trial=(trial or "")[:20],
            errors=errors,
            status_code=400,
        )
    return _form_page(request, runtime, offered_trial=offered_trial, offered_conditions=offered_conditions)


async def _read_form(request: Request) -> FormData:
    try:
        return await request.form(max_files=0, max_fields=50)
    except Exception:  # malformed multipart and the like: treat as an empty form
        return FormData()


@router.post("/subscribe", include_in_schema=False, response_class=HTMLResponse)
async def subscribe_submit(request: Request, runtime: RuntimeDep) -> Response:
    form = await _read_form(request)
    return await run_in_threadpool(_subscribe_submit, request, runtime, form)


def _text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


def _texts(form: FormData, name: str) -> list[str]:
    return [v.strip() for v in form.getlist(name) if isinstance(v, str) and v.strip()]


def _subscribe_submit(request: Request, runtime: RuntimeDep, form: FormData) -> Response:
    offered_trial, offered_conditions, _ = _clean_offers(
        _text(form, "offered_trial"), _texts(form, "offered_condition")
    )
    offer_mode = bool(offered_trial or offered_conditions)
    errors: dict[str, str] = {}
    address = ""
    try:
        address = normalize_email(_text(form, "email"))
    except InvalidAddress:
        typed = bool(_text(form, "email"))
        errors["email"] = (
            "Enter a valid email address, like name@example.com." if typed else "Enter your email address."
        )
    targets: list[Target] = []
    trial_value = _text(form, "trial")
    if trial_value:
        try:
            targets.append(subscriptions.trial_target(trial_value))
        except InvalidTarget:
            errors["trial"] = "That study number doesn't look right: it's NCT followed by 8 digits."
    condition_values = _texts(form, "condition")
    for phrase in condition_values[: MAX_OFFERED_CONDITIONS + 1]:
        try:
            targets.append(subscriptions.condition_target(phrase))
        except InvalidTarget as exc:
            errors["condition"] = f"That condition can't be used: {exc}."
    digest = DigestChoice()
    try:
        digest = DigestChoice.from_form(form)
    except InvalidPreference as exc:
        errors["frequency"] = f"That choice can't be used: {exc}."
    if not targets and not {"trial", "condition"} & errors.keys():
        errors["targets"] = "Choose at least one alert." if offer_mode else "Enter a study number or a condition."
    if errors:
        return _form_page(
            request,
            runtime,
            offered_trial=offered_trial,
            offered_conditions=offered_conditions,
            chosen_trial=trial_value.upper() or None,
            chosen_conditions=[t.label for t in targets if t.kind == "condition"],
            typed_trial="" if offer_mode else trial_value[:20],
            typed_condition="" if offer_mode else (condition_values[0][:300] if condition_values else ""),
            errors=errors,
            status_code=422,
            form=form,
        )
    try:
        perform_signup(
            runtime,
            _limiter(request),
            request.app.state.enqueue,
            address,
            targets,
            client_key(runtime, request),
            digest,
        )
    except RateLimited as exc:
        log.info("signup.rate_limited", scope=exc.scope)
        return pages.rate_limited_page(request, exc.retry_after_s)
    # Post/redirect/get: reloading the "check your inbox" page never signs up again.
    return RedirectResponse("/subscribe/sent", status_code=303)


@router.api_route("/subscribe/sent", methods=["GET", "HEAD"], include_in_schema=False, response_class=HTMLResponse)
def subscribe_sent(request: Request) -> Response:
    return pages.render(request, "subscribe_sent.html", embeddable=True)
