"""The link tokens of our pages, checked: the length and text checks every link page applies, then the signature.

One place for what ``alerts.web.links`` and ``alerts.web.digests`` both need (they import each other, so
neither can hold it): a manage token's subscriber, read once.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response
from sqlalchemy import select

from alerts import text
from alerts.db import autocommit
from alerts.models import Subscriber
from alerts.runtime import Runtime
from alerts.tokens import Purpose, TokenError
from alerts.web import pages

# Our tokens are well under this; anything longer is not worth verifying.
MAX_TOKEN_LENGTH = 400


def _check_text(token: str) -> None:
    """Too long, or characters no token of ours has: refused before any signature work."""
    if len(token) > MAX_TOKEN_LENGTH or text.problem(token):
        raise TokenError("invalid")


def verify(runtime: Runtime, purpose: Purpose, token: str) -> int:
    """The one id a token carries (confirm tokens: within their age). Raises TokenError."""
    _check_text(token)
    max_age = runtime.settings.confirm_max_age_s if purpose is Purpose.CONFIRM else None
    return runtime.signer.verify(purpose, token, max_age)


def verify_confirm(runtime: Runtime, token: str) -> tuple[int, ...]:
    """The subscriptions a confirm token names (one sign-up may name several). Raises TokenError."""
    _check_text(token)
    return runtime.signer.verify_ids(Purpose.CONFIRM, token, runtime.settings.confirm_max_age_s)


def subscriber_id(runtime: Runtime, token: str) -> int | None:
    """The subscriber behind a manage token, or None when the token is fine but the person was erased.

    Raises TokenError for a bad token (no database read for those).
    """
    wanted = verify(runtime, Purpose.MANAGE, token)
    # One statement, no transaction: a read of one row needs no BEGIN/COMMIT round trips.
    with autocommit(runtime.engine).connect() as connection:
        found = connection.scalar(select(Subscriber.id).where(Subscriber.id == wanted))
    return int(found) if found is not None else None


def manage_subscriber(request: Request, runtime: Runtime, token: str) -> int | Response:
    """The subscriber a manage form acts for, or the page to answer instead: "this link doesn't work" for a
    bad token, "no longer valid" for an erased subscriber."""
    try:
        found = subscriber_id(runtime, token)
    except TokenError:
        return pages.invalid_link(request)
    return pages.gone_link(request) if found is None else found
