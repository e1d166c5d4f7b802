"""Sign-up: ``POST /api/subscriptions`` (JSON) and the HTML form at ``/subscribe`` (embeddable on a trial page).

Whatever the address (new, pending, already following), the request does the same work and gets the same
answer: validate, count the attempt, record the sign-up, queue it (``alerts.signups``). A worker decides
what it means for the address and sends at most one confirmation email, which confirms everything the
submission asked for. So neither the answer nor its timing tells anyone who subscribes to what.
Conditions are accepted only when the vocabulary vouches for them (``alerts.web.choices``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal
from urllib.parse import urlencode

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException as StarletteHTTPException

from alerts import signups, subscriptions, text
from alerts.addresses import InvalidAddress, normalize_email
from alerts.db import autocommit, transaction
from alerts.digests.preferences import DigestChoice, form_context_from, parse_time_zone
from alerts.digests.preferences import InvalidPreference as InvalidDigestChoice
from alerts.models import Trial
from alerts.preferences import InvalidPreference, Preferences
from alerts.runtime import Runtime
from alerts.subscriptions import InvalidTarget, Target
from alerts.web import choices, pages
from alerts.web import places as place_form
from alerts.web.conditions import ConditionSuggestion
from alerts.web.deps import RuntimeDep
from alerts.web.linkstore import LinkStore
from alerts.web.places import PreferencesBody
from alerts.web.ratelimit import CONFIRM_PER_ADDRESS, SIGNUP_PER_IP, RateLimited, RateLimiter
from alerts.web.signupqueue import SignupQueue
from alerts.web.validation import FieldIssue, ValidationProblem

log = structlog.get_logger("alerts.web.signup")

router = APIRouter(tags=["subscriptions"])

MAX_OFFERED_CONDITIONS = 5
CHECK_YOUR_EMAIL = (
    "Check your inbox: if this is a new alert, a confirmation link is on its way. "
    "Nothing is sent until the link is clicked."
)


# What every text field refuses (alerts.text), said in the schema: control characters other than whitespace.
READABLE = "^[^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f]*$"


def _exactly_one_of(schema: dict[str, Any]) -> None:
    # What the model enforces, said in the schema: "trial" or "condition", exactly one, never null.
    properties = schema["properties"]
    for name in ("trial", "condition"):
        field = properties[name]
        string = next(b for b in field.pop("anyOf") if b.get("type") == "string")
        field.pop("default", None)
        properties[name] = string | field
    properties["email"]["pattern"] = READABLE
    properties["condition"]["pattern"] = READABLE
    schema["oneOf"] = [{"required": ["trial"]}, {"required": ["condition"]}]


class SignupRequest(BaseModel):
    """Follow one trial or one condition: exactly one of ``trial`` and ``condition``."""

    model_config = ConfigDict(json_schema_extra=_exactly_one_of)

    email: str = Field(
        max_length=320,
        description="The subscriber's address (syntax-checked, never echoed)",
        json_schema_extra={"format": "email"},
    )
    trial: str | None = Field(
        default=None,
        max_length=20,
        pattern=r"^\s*[Nn][Cc][Tt][0-9]{8}\s*$",
        description="NCT ID of a study to follow",
        examples=["NCT06740149"],
    )
    condition: str | None = Field(
        default=None,
        max_length=300,
        description=(
            "A condition the service knows from registry records (see GET /api/conditions): be told about "
            "new studies for it. An unknown one is refused with suggestions."
        ),
        examples=["Acute-On-Chronic Liver Failure"],
    )
    # "Can I take part?" (optional; see alerts.preferences and PUT /api/preferences). Stored only while the
    # address has no active alert; afterwards its owner changes them with the manage token.
    preferences: PreferencesBody | None = Field(
        default=None, description="Optional city, distance, age and sex: only studies the person could join"
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

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name in ("trial", "condition"):
                if name in data and data[name] is None:
                    raise ValueError(f"'{name}' may be left out but not null")
        return data

    @field_validator("email", "trial", "condition", mode="before")
    @classmethod
    def _readable(cls, value: Any) -> Any:
        # NUL bytes and lone surrogates stop here, before anything stores, logs or echoes them.
        return text.check(value) if isinstance(value, str) else value

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
        except InvalidDigestChoice as exc:
            raise ValueError(str(exc)) from None

    def digest(self) -> DigestChoice:
        return DigestChoice.parse(self.frequency, self.time_zone, self.digest_hour, self.digest_weekday)

    @model_validator(mode="after")
    def _exactly_one(self) -> SignupRequest:
        if (self.trial is None) == (self.condition is None):
            raise ValueError("give exactly one of 'trial' and 'condition'")
        if self.preferences is not None:
            try:
                self.preferences.parse()
            except InvalidPreference as exc:
                raise ValueError(f"preferences.{exc.field}: {exc}") from None
        return self


class SignupAccepted(BaseModel):
    status: Literal["check-your-email"] = "check-your-email"
    message: str = CHECK_YOUR_EMAIL


class SignupProblem(ValidationProblem):
    suggestions: list[ConditionSuggestion] = Field(
        default_factory=list,
        description="For a condition the service does not know: known conditions to choose from instead",
    )


class BadBody(BaseModel):
    detail: str = "There was an error parsing the body"


class TooManyRequests(BaseModel):
    detail: str = "too many requests; try again later"
    retry_after_s: int = Field(description="Seconds to wait; also in the Retry-After header")


def client_key(runtime: Runtime, request: Request) -> str:
    """The client IP as a keyed hash (behind a trusted proxy, ``alerts.web.app`` has put the real client there)."""
    host = request.client.host if request.client else "unknown"
    return runtime.hasher(f"ip:{host}")


def perform_signup(
    runtime: Runtime,
    limiter: RateLimiter,
    enqueue: Any,
    address: str,
    targets: list[Target],
    ip_key: str,
    chosen: Preferences | None = None,
    digest: DigestChoice | None = None,
) -> None:
    """Count the attempt, record the sign-up and queue it. Raises RateLimited.

    The same work for every address: one INSERT and one message. The per-address limit counts every
    submission (one, whatever it asks for), not confirmation emails: counting emails would answer 429 for
    a new address but 202 for an active one, telling a stranger whether someone is subscribed.
    """
    settings = runtime.settings
    # Both limits in one round trip to Redis (alerts.web.ratelimit).
    limiter.hit_all(
        [
            (SIGNUP_PER_IP, settings.signup_per_ip, ip_key),
            (CONFIRM_PER_ADDRESS, settings.confirm_per_address, runtime.hasher(address)),
        ]
    )
    # One INSERT in autocommit: no BEGIN/COMMIT round trips, no ORM unit of work for one row.
    with autocommit(runtime.engine).connect() as connection:
        request_id = signups.insert(connection, address, targets, chosen=chosen, digest=digest)
    enqueue.process_signup(request_id)
    log.info("signup.recorded", request_id=request_id, targets=len(targets))


def _limiter(request: Request) -> RateLimiter:
    limiter: RateLimiter = request.app.state.limiter
    return limiter


def _too_many_json(exc: RateLimited) -> JSONResponse:
    body = TooManyRequests(retry_after_s=exc.retry_after_s)
    return JSONResponse(body.model_dump(), status_code=429, headers={"Retry-After": str(exc.retry_after_s)})


def _suggestions(items: list[Any]) -> list[ConditionSuggestion]:
    return [ConditionSuggestion(**asdict(item)) for item in items]


@router.post(
    "/api/subscriptions",
    status_code=202,
    response_model=SignupAccepted,
    summary="Sign up for an alert (double opt-in)",
    description=(
        "Records the sign-up; a confirmation link is emailed unless the address already follows it. The "
        "answer is the same whether or not the address is already subscribed. Re-submitting never "
        "downgrades an active subscription. A condition must be one the service knows from registry "
        "records (GET /api/conditions); an unknown one is refused (422) with suggestions."
    ),
    responses={
        400: {"model": BadBody, "description": "the body cannot be read (not UTF-8, not JSON)"},
        413: {"model": BadBody, "description": "the body is larger than ALERTS_MAX_BODY_BYTES"},
        422: {
            "model": SignupProblem,
            "description": "invalid input (each field and why, never the value), or an unknown condition",
        },
        429: {
            "model": TooManyRequests,
            "description": "too many sign-ups from this client, or for this address",
            "headers": {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}},
        },
    },
)
async def create_subscription(body: SignupRequest, request: Request, runtime: RuntimeDep) -> Any:
    target: Target | None
    offered: list[Any] = []
    if body.trial is not None:
        target = subscriptions.trial_target(body.trial)
    else:
        target, offered = await run_in_threadpool(_condition, runtime, body.condition or "")
    if target is None:
        issue = FieldIssue(loc=["body", "condition"], msg=choices.UNKNOWN_CONDITION, type="unknown_condition")
        problem = SignupProblem(detail=[issue], suggestions=_suggestions(offered))
        return JSONResponse(problem.model_dump(), status_code=422)
    chosen = body.preferences.parse() if body.preferences is not None else None
    store: LinkStore | None = getattr(request.app.state, "linkstore", None)
    try:
        if store is None:
            await run_in_threadpool(
                perform_signup,
                runtime,
                _limiter(request),
                request.app.state.enqueue,
                body.email,
                [target],
                client_key(runtime, request),
                chosen,
                body.digest(),
            )
        else:
            await _perform_signup_async(runtime, request, store, body.email, target, chosen, body.digest())
    except RateLimited as exc:
        log.info("signup.rate_limited", scope=exc.scope)
        return _too_many_json(exc)
    return SignupAccepted()


def _condition(runtime: Runtime, phrase: str) -> tuple[Target | None, list[Any]]:
    """The condition the vocabulary vouches for, or suggestions instead."""
    with transaction(runtime.engine) as session:
        target = choices.condition(session, phrase)
        return target, [] if target else choices.suggestions(session, phrase)


async def _perform_signup_async(
    runtime: Runtime,
    request: Request,
    store: LinkStore,
    address: str,
    target: Target,
    chosen: Preferences | None,
    digest: DigestChoice,
) -> None:
    """``perform_signup`` on PostgreSQL, on the event loop: the rate limits (one Redis script), the INSERT (the
    link store's pool: no connection churn, no BEGIN/COMMIT) and the task message (one LPUSH on the loop,
    ``alerts.web.signupqueue``; other brokers: Celery's blocking client in a worker thread). The same work, in
    the same order, for every address."""
    settings = runtime.settings
    await _limiter(request).hit_all_async(
        [
            (SIGNUP_PER_IP, settings.signup_per_ip, client_key(runtime, request)),
            (CONFIRM_PER_ADDRESS, settings.confirm_per_address, runtime.hasher(address)),
        ]
    )
    request_id = await store.record_signup(signups.insert_params(address, [target], chosen=chosen, digest=digest))
    queue: SignupQueue | None = request.app.state.signup_queue
    if queue is not None:
        await queue.push(request_id)
    else:
        await run_in_threadpool(request.app.state.enqueue.process_signup, request_id)
    log.info("signup.recorded", request_id=request_id, targets=1)


# --- the HTML form -------------------------------------------------------------------------------------

BAD_STUDY_NUMBER = "That study number doesn't look right: it's NCT followed by 8 digits."
UNREADABLE = "That contains characters we can't accept. Please type it again."


@dataclass
class Offer:
    label: str
    checked: bool


@dataclass
class TrialOffer:
    nct_id: str
    title: str | None
    checked: bool


def _trial_title(session: Session, nct_id: str) -> str | None:
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
    suggested: list[str] | None = None,
    errors: dict[str, str] | None = None,
    status_code: int = 200,
    form: FormData | None = None,
) -> HTMLResponse:
    first_visit = chosen_conditions is None
    trial_offer = None
    if offered_trial:
        checked = first_visit or chosen_trial == offered_trial
        with transaction(runtime.engine) as session:
            trial_offer = TrialOffer(offered_trial, _trial_title(session, offered_trial), checked)
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
        "suggested": suggested or [],
        "errors": errors or {},
        # Digest choices (alerts.digests.preferences), kept as typed when the form comes back with errors.
        **form_context_from(form),
    } | place_form.form_context(request, None, form)
    return pages.render(request, "subscribe.html", context, status_code=status_code)


def _offered_conditions(runtime: Runtime, phrases: list[str]) -> list[str]:
    """The conditions a link offers, in the vocabulary's words; ones it does not know are left out."""
    names: list[str] = []
    usable = [p for p in phrases if text.problem(p) is None and len(p) <= 300][: MAX_OFFERED_CONDITIONS * 2]
    if not usable:
        return names
    with transaction(runtime.engine) as session:
        for phrase in usable:
            target = choices.condition(session, phrase)
            if target is not None and target.label not in names:
                names.append(target.label)
    return names[:MAX_OFFERED_CONDITIONS]


def _offered_trial(trial: str | None) -> tuple[str | None, str | None]:
    """(NCT ID, error) of the study a link offers."""
    if not trial or not trial.strip():
        return None, None
    if text.problem(trial):
        return None, BAD_STUDY_NUMBER
    try:
        return subscriptions.trial_target(trial).key, None
    except InvalidTarget:
        return None, BAD_STUDY_NUMBER


@router.api_route("/subscribe", methods=["GET", "HEAD"], include_in_schema=False, response_class=HTMLResponse)
def subscribe_form(request: Request, runtime: RuntimeDep) -> Response:
    params = request.query_params
    trial = params.get("trial")
    offered_trial, error = _offered_trial(trial)
    if error:
        # A bad study number in the embed link: show the open form with the problem, not a dead end.
        typed = (trial or "")[:20] if text.problem(trial or "") is None else ""
        return _form_page(
            request,
            runtime,
            offered_trial=None,
            offered_conditions=[],
            typed_trial=typed,
            errors={"trial": error},
            status_code=400,
        )
    offered_conditions = _offered_conditions(runtime, params.getlist("condition"))
    return _form_page(request, runtime, offered_trial=offered_trial, offered_conditions=offered_conditions)


async def _read_form(request: Request) -> FormData:
    try:
        return await request.form(max_files=0, max_fields=50)
    except StarletteHTTPException as exc:
        if exc.status_code == 413:
            raise  # over the body limit (alerts.web.security): answered as such
        return FormData()
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


@dataclass
class _Submission:
    address: str = ""
    trial_value: str = ""
    targets: list[Target] = field(default_factory=list)
    condition_values: list[str] = field(default_factory=list)
    suggested: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)


def _read_submission(runtime: Runtime, form: FormData) -> _Submission:
    """The address and targets a form asks for, each checked; ``errors`` by field (what to show)."""
    found = _Submission()
    errors = found.errors
    email = _text(form, "email")
    if text.problem(email):
        errors["email"] = UNREADABLE
    else:
        try:
            found.address = normalize_email(email)
        except InvalidAddress:
            errors["email"] = (
                "Enter a valid email address, like name@example.com." if email else "Enter your email address."
            )
    found.trial_value = _text(form, "trial")
    if found.trial_value:
        try:
            found.targets.append(subscriptions.trial_target(text.check(found.trial_value)))
        except (InvalidTarget, ValueError):
            errors["trial"] = BAD_STUDY_NUMBER
            found.trial_value = "" if text.problem(found.trial_value) else found.trial_value
    found.condition_values = _texts(form, "condition")[: MAX_OFFERED_CONDITIONS + 1]
    phrases = []
    for phrase in found.condition_values:
        if text.problem(phrase):
            errors["condition"] = UNREADABLE
            continue
        try:
            phrases.append(subscriptions.condition_target(phrase).label)
        except InvalidTarget as exc:
            errors["condition"] = f"That condition can't be used: {exc}."
    if phrases:
        with transaction(runtime.engine) as session:
            for phrase in phrases:
                target = choices.condition(session, phrase)
                if target is not None:
                    found.targets.append(target)
                    continue
                errors["condition"] = (
                    "We don't know that condition from the studies we follow. Choose one below, or try other words."
                )
                names = [choices.shown_name(s) for s in choices.suggestions(session, phrase)]
                found.suggested.extend(n for n in names if n not in found.suggested)
    if "condition" in errors:
        # Typed text we could not use is not shown again (the page shows only what we vouch for).
        found.condition_values = []
    return found


def _subscribe_submit(request: Request, runtime: RuntimeDep, form: FormData) -> Response:
    offered_trial, _ = _offered_trial(_text(form, "offered_trial"))
    offered_conditions = _offered_conditions(runtime, _texts(form, "offered_condition"))
    offer_mode = bool(offered_trial or offered_conditions)
    found = _read_submission(runtime, form)
    errors, targets = found.errors, found.targets
    digest = DigestChoice()
    try:
        digest = DigestChoice.from_form(form)
    except InvalidDigestChoice as exc:
        errors["frequency"] = f"That choice can't be used: {exc}."
    if not targets and not {"trial", "condition"} & errors.keys():
        errors["targets"] = "Choose at least one alert." if offer_mode else "Enter a study number or a condition."
    chosen = None
    try:
        chosen = place_form.from_form(form)
    except InvalidPreference as exc:
        errors[exc.field] = str(exc)
    if errors:
        condition_values = found.condition_values
        return _form_page(
            request,
            runtime,
            offered_trial=offered_trial,
            offered_conditions=offered_conditions,
            chosen_trial=found.trial_value.upper() or None,
            chosen_conditions=[t.label for t in targets if t.kind == "condition"],
            typed_trial="" if offer_mode else found.trial_value[:20],
            typed_condition="" if offer_mode else (condition_values[0][:300] if condition_values else ""),
            suggested=found.suggested,
            errors=errors,
            status_code=422,
            form=form,
        )
    try:
        perform_signup(
            runtime,
            _limiter(request),
            request.app.state.enqueue,
            found.address,
            list(dict.fromkeys(targets)),
            client_key(runtime, request),
            chosen if chosen != Preferences() else None,
            digest,
        )
    except RateLimited as exc:
        log.info("signup.rate_limited", scope=exc.scope)
        return pages.rate_limited_page(request, exc.retry_after_s, back=_back_link(form))
    # Post/redirect/get: reloading the "check your inbox" page never signs up again.
    return RedirectResponse("/subscribe/sent", status_code=303)


def _back_link(form: FormData) -> str:
    """The form again, with the choices it offered (the way back from the "please wait" page)."""
    params = [("trial", v) for v in _texts(form, "offered_trial")[:1]]
    params += [("condition", v) for v in _texts(form, "offered_condition")[:MAX_OFFERED_CONDITIONS]]
    params = [(k, v) for k, v in params if text.problem(v) is None and len(v) <= 300]
    return "/subscribe" + (f"?{urlencode(params)}" if params else "")


@router.api_route("/subscribe/sent", methods=["GET", "HEAD"], include_in_schema=False, response_class=HTMLResponse)
def subscribe_sent(request: Request) -> Response:
    return pages.render(request, "subscribe_sent.html")
