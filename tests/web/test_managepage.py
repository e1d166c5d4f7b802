"""The manage page filled into a skeleton (alerts.web.managepage) is byte for byte what Jinja renders."""

from __future__ import annotations

import itertools

import pytest
from fastapi.testclient import TestClient
from starlette.requests import Request

from alerts.db import transaction
from alerts.digests.preferences import DigestPreferences
from alerts.digests.preferences import set_preferences as set_digest_time
from alerts.linkreads import ManageView, Named
from alerts.models import Subscription, SubscriptionKind, SubscriptionStatus
from alerts.preferences import Preferences, set_preferences
from alerts.runtime import Runtime
from alerts.subscriptions import Shown, unsubscribe
from alerts.tokens import Purpose
from alerts.web import links, linktokens, managepage, pages
from tests.factories import follow
from tests.web.journey import manage_token_of

TOKEN = "MzAwMQ.w1K_z8ZTfA1chR9IC6Bh7QelYdk"


class _Settings:
    site_name = "Trial <alerts> & co"
    embed_origins = ()


class _State:
    class runtime:  # what request.app.state.runtime is
        settings = _Settings


class _App:
    state = _State


def _request(accept_language: str) -> Request:
    headers = [(b"accept-language", accept_language.encode())]
    return Request({"type": "http", "method": "GET", "path": f"/manage/{TOKEN}", "headers": headers, "app": _App})


def _jinja(request: Request, view: ManageView, token: str = TOKEN) -> bytes:
    context = pages.site_context(request) | links._manage_context(request, token, view)
    return pages.templates.env.get_template("manage.html").render(context).encode()


def _named(n: int, status: SubscriptionStatus, frequency: str, trial: bool, name: str) -> Named:
    if trial:
        shown = Shown(SubscriptionKind.TRIAL, name, f"A title with <b> & {n}" if n % 2 else None)
    else:
        shown = Shown(SubscriptionKind.CONDITION, name)
    return Named(1000 + n, status.value, frequency, shown, f"sentence {n}")


NAMES = ["NCT00000001", "Breast Cancer", "Diabetes <b>&\"x'", "ünïcødé – disease"]
STATUSES = list(SubscriptionStatus)
FREQUENCIES = ["immediately", "daily", "weekly"]
CHOSEN = [
    Preferences(),
    Preferences(city_id=2759661, distance=50, unit="km", recruiting_sites_only=True, age=54, sex="FEMALE"),
    Preferences(city_id=2759661),
    Preferences(age=0, sex="MALE"),
    Preferences(city_id=4250542, distance=100, unit="mi", age=120),
]
ZONES = [("UTC", 8, 0), ("Asia/Calcutta", 7, 3), ("Europe/Amsterdam", 0, 6), ("Etc/GMT+5", 23, 1)]


def _views() -> list[ManageView]:
    views = [ManageView([], chosen, *zone) for chosen, zone in zip(CHOSEN, ZONES * 2, strict=False)]
    cases = itertools.product(range(1, 4), STATUSES, FREQUENCIES, CHOSEN, ZONES)
    for count, status, frequency, chosen, zone in itertools.islice(cases, 0, None, 7):
        subs = [
            _named(n, status if n % 2 == 0 else SubscriptionStatus.ACTIVE, frequency, n % 3 != 1, NAMES[n % 4])
            for n in range(count)
        ]
        views.append(ManageView(subs, chosen, *zone))
    return views


@pytest.mark.parametrize("accept_language", ["en-US,en;q=0.9", "nl-NL", ""])
def test_every_kind_of_page_is_what_jinja_renders(accept_language: str) -> None:
    request = _request(accept_language)
    views = _views()
    assert len(views) > 25
    for view in views:
        context = pages.site_context(request) | links._manage_context(request, TOKEN, view)
        assert managepage.body(context) == _jinja(request, view)


def test_pages_of_one_shape_each_show_their_own_values() -> None:
    request = _request("nl-NL")
    active = SubscriptionStatus.ACTIVE
    first = ManageView([_named(1, active, "daily", True, "NCT00000001")], Preferences(), "UTC", 8, 0)
    second = ManageView([_named(3, active, "weekly", True, "NCT0000&003")], Preferences(), "UTC", 9, 4)
    contexts = [
        pages.site_context(request) | links._manage_context(request, token, view)
        for token, view in (("first.tok", first), ("second.tok", second))
    ]
    assert managepage.shape(contexts[0]) == managepage.shape(contexts[1])  # one skeleton serves both
    filled = [managepage.body(context) for context in contexts]
    assert filled == [_jinja(request, first, "first.tok"), _jinja(request, second, "second.tok")]
    assert b"second.tok" not in filled[0] and b"first.tok" not in filled[1]


def _subscriber_with_everything(runtime: Runtime) -> str:
    """Digests on, a place, several alerts (one unsubscribed), an old zone name a browser reported."""
    ids = [
        follow(runtime, "a@example.org", trial="NCT00000001", frequency="daily"),
        follow(runtime, "a@example.org", condition="Breast Cancer", frequency="weekly"),
        follow(runtime, "a@example.org", trial="NCT00000002"),
    ]
    with transaction(runtime.engine) as session:
        subscriber_id = session.get(Subscription, ids[0]).subscriber_id  # type: ignore[union-attr]
        unsubscribe(session, ids[2])
        place = Preferences(city_id=2759661, distance=50, recruiting_sites_only=True, age=54, sex="FEMALE")
        set_preferences(session, subscriber_id, place)
        set_digest_time(session, subscriber_id, DigestPreferences("Asia/Calcutta", 7, 3))
    return manage_token_of(runtime, "a@example.org")


def test_served_page_is_what_jinja_renders(client: TestClient, runtime: Runtime) -> None:
    """Over HTTP, on both databases (the link store on PostgreSQL, the ORM on SQLite): the same bytes and headers
    as a Jinja render of the same view."""
    _subscriber_with_everything(runtime)
    follow(runtime, "b@example.org", trial="NCT00000003")
    for address in ("a@example.org", "b@example.org"):
        token = manage_token_of(runtime, address)
        for language in ("en-GB", "de-DE"):
            page = client.get(f"/manage/{token}", headers={"accept-language": language})
            assert page.status_code == 200
            with transaction(runtime.engine) as session:
                subscriber_id = linktokens.verify(runtime, Purpose.MANAGE, token)
                view = links._manage_view(session, subscriber_id)
            assert view is not None
            scope = {
                "type": "http",
                "path": "/",
                "headers": [(b"accept-language", language.encode())],
                "app": client.app,
            }
            request = Request(scope)
            assert page.content == _jinja(request, view, token)
            assert page.headers["content-type"] == "text/html; charset=utf-8"
            assert page.headers["cache-control"] == "no-store"
            assert page.headers["x-frame-options"] == "DENY"
            assert "frame-ancestors 'none'" in page.headers["content-security-policy"]


def test_answers_to_the_forms_still_render_through_jinja(client: TestClient, runtime: Runtime) -> None:
    token = _subscriber_with_everything(runtime)
    saved = client.post(f"/manage/{token}/preferences", data={"age": "61"})
    assert saved.status_code == 200 and "Your choices are saved." in saved.text
    refused = client.post(f"/manage/{token}/preferences", data={"age": "old"})
    assert refused.status_code == 422 and 'aria-invalid="true"' in refused.text
    again = client.get(f"/manage/{token}")
    assert "Your choices are saved." not in again.text and 'value="61"' in again.text
