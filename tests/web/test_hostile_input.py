"""NUL bytes and lone surrogates on every input path: a clear 4xx, nothing stored, nothing echoed, never a 500."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from alerts.db import transaction
from alerts.models import Event, RejectedEvent, SignupRequest, Subscriber
from alerts.runtime import Runtime
from alerts.tokens import Purpose
from alerts.transports.memory import MemoryTransport
from tests.conftest import study
from tests.factories import follow, new_trial_event
from tests.web.journey import manage_token_of, subscriptions_of, teach

AUTH = {"Authorization": "Bearer ingest-token-for-tests", "Content-Type": "application/json"}
JSON = {"Content-Type": "application/json"}
HTML = {"Accept": "text/html"}


def nothing_stored(runtime: Runtime) -> bool:
    with transaction(runtime.engine) as session:
        return not session.scalar(select(func.count()).select_from(Subscriber)) and not session.scalar(
            select(func.count()).select_from(SignupRequest)
        )


# Raw JSON text: "\u0000" and "\udcff" are valid JSON escapes that decode to a NUL and a lone surrogate.
@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"email": "a@example.org", "condition": "liver\\u0000failure"}', "condition"),
        (b'{"email": "a@example.org", "condition": "liver \\udcff failure"}', "condition"),
        (b'{"email": "a\\udcff@example.org", "trial": "NCT06740149"}', "email"),
        (b'{"email": "a@example.org\\u0000", "trial": "NCT06740149"}', "email"),
        (b'{"email": "a@example.org", "trial": "NCT0674\\u00000149"}', "trial"),
    ],
)
def test_sign_up_api_refuses_nul_and_lone_surrogates(
    client: TestClient, runtime: Runtime, memory: MemoryTransport, body: bytes, field: str
) -> None:
    response = client.post("/api/subscriptions", content=body, headers=JSON)
    assert response.status_code == 422
    [issue] = response.json()["detail"]
    assert issue["loc"] == ["body", field]
    assert "can't accept" in issue["msg"]
    assert nothing_stored(runtime) and memory.messages == []


def test_422_never_echoes_what_was_sent(client: TestClient) -> None:
    # A surrogate in a field that fails validation for another reason (a number where text belongs) and an
    # unknown field: FastAPI's own handler would echo the input (and crashed on the surrogate).
    body = b'{"email": 12, "trial": ["\\udcff"], "condition": {"secret.person@example.org": "\\udcff"}}'
    response = client.post("/api/subscriptions", content=body, headers=JSON)
    assert response.status_code == 422
    for issue in response.json()["detail"]:
        assert set(issue) == {"loc", "msg", "type"}
    assert "secret" not in response.text and "\\udcff" not in response.text
    # Not JSON at all, or not UTF-8.
    assert client.post("/api/subscriptions", content=b'{"email": "\xff"}', headers=JSON).status_code in (400, 422)
    assert client.post("/api/subscriptions", content=b"{nope", headers=JSON).status_code == 422


def test_form_refuses_nul(client: TestClient, runtime: Runtime) -> None:
    teach(runtime)
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    response = client.post("/subscribe", content=b"email=a%40example.org&condition=liver%00failure", headers=form)
    assert response.status_code == 422
    assert "characters we can" in response.text
    nul_email = client.post("/subscribe", content=b"email=a%00%40example.org&trial=NCT06740149", headers=form)
    assert nul_email.status_code == 422
    assert nothing_stored(runtime)
    # Forms decode invalid UTF-8 as U+FFFD, never as a surrogate: that is only a separator in a condition,
    # and what is followed is named in the vocabulary's words.
    odd = client.post(
        "/subscribe",
        content=b"email=a%40example.org&condition=liver%ED%B3%BFfailure",
        headers=form,
        follow_redirects=False,
    )
    assert odd.status_code == 303
    assert [s.label for s in subscriptions_of(runtime, "a@example.org")] == ["Liver Failure"]


def test_form_link_with_nul_is_a_400_page(client: TestClient) -> None:
    page = client.get("/subscribe?trial=NCT0674%000149", headers=HTML)
    assert page.status_code == 400
    assert "\x00" not in page.text
    # Conditions a link offers with a NUL are simply not offered.
    page = client.get("/subscribe?condition=liver%00failure", headers=HTML)
    assert page.status_code == 200
    assert 'name="offered_condition"' not in page.text


@pytest.mark.parametrize("bad", ["\\u0000", "\\udcff", "\\ud800\\udc00\\udcff"])
def test_events_api_records_a_rejection_for_nul_and_lone_surrogates(
    client: TestClient, runtime: Runtime, bad: str
) -> None:
    import json

    event = new_trial_event(study("NCT00124774"), "Herniated Disc")
    text = json.dumps(event).replace('"Herniated Disc"', f'"Herniated {bad} Disc"', 1)
    response = client.post("/api/events", content=text.encode(), headers=AUTH)
    assert response.status_code == 422
    body = response.json()
    assert body["status"] == "rejected"
    assert body["errors"][0]["field"] == "condition"
    assert "can't accept" in body["errors"][0]["message"]
    with transaction(runtime.engine) as session:
        assert session.scalar(select(func.count()).select_from(RejectedEvent)) == 1
        assert session.scalar(select(func.count()).select_from(Event)) == 0
    # A key with a lone surrogate, and a non-object body with one.
    keyed = (
        text.replace('"event_id"', '"\\udcffevent_id"', 1) if '"event_id"' in text else text[:-1] + ', "\\udcff": 1}'
    )
    assert client.post("/api/events", content=keyed.encode(), headers=AUTH).status_code == 422
    assert client.post("/api/events", content=b'["\\udcff"]', headers=AUTH).status_code == 422


def test_conditions_query_refuses_nul(client: TestClient) -> None:
    response = client.get("/api/conditions?q=liver%00failure")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "q"]


@pytest.mark.parametrize("kind", ["confirm", "unsubscribe", "manage"])
@pytest.mark.parametrize("suffix", ["%00", "%ED%B3%BF", "\\udcff"])
def test_tokens_in_paths_with_nul_or_invalid_unicode_are_invalid_links(
    client: TestClient, runtime: Runtime, kind: str, suffix: str
) -> None:
    subscription_id = follow(runtime, "a@example.org", trial="NCT06740149")
    token = {
        "confirm": runtime.signer.sign(Purpose.CONFIRM, subscription_id),
        "unsubscribe": runtime.signer.sign(Purpose.UNSUBSCRIBE, subscription_id),
        "manage": manage_token_of(runtime, "a@example.org"),
    }[kind]
    post_to = {"confirm": "", "unsubscribe": "", "manage": "/unsubscribe"}[kind]
    for method, path in (("GET", f"/{kind}/{token}{suffix}"), ("POST", f"/{kind}/{token}{suffix}{post_to}")):
        response = client.request(method, path, headers=HTML)
        assert response.status_code == 400, (method, response.status_code)
        assert "This link doesn" in response.text
