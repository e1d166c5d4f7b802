"""Sign-up over HTTP: the JSON API and the HTML form, double opt-in, no enumeration, no address in URLs."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from structlog.testing import capture_logs

from alerts import subscriptions, vocabulary
from alerts.db import transaction
from alerts.models import SignupRequest, SubscriptionStatus
from alerts.runtime import Runtime
from alerts.transports.memory import MemoryTransport
from tests.conftest import InlineEnqueue, study
from tests.factories import follow
from tests.web.journey import add_trial, link_in, subscriptions_of, teach, text_of

TRIAL = "NCT06740149"


def test_api_sign_up_sends_one_confirmation_after_commit(
    client: TestClient, runtime: Runtime, memory: MemoryTransport, inline: InlineEnqueue
) -> None:
    response = client.post("/api/subscriptions", json={"email": " Pat@Example.ORG ", "trial": "nct06740149"})
    assert response.status_code == 202
    assert response.json()["status"] == "check-your-email"
    [sub] = subscriptions_of(runtime, "pat@example.org")
    assert (sub.kind, sub.target, sub.status) == ("trial", TRIAL, SubscriptionStatus.PENDING)
    # The in-process worker reads the recorded request, then the subscription, each in its own transaction:
    # the email goes out only because the request committed before it was queued, and the subscription
    # before its confirmation was.
    assert len(inline.signups) == 1
    assert inline.confirmations == [sub.id]
    with transaction(runtime.engine) as session:
        assert session.scalars(select(SignupRequest)).all() == []  # decided, and the address not kept there
    [message] = memory.messages
    assert str(message["To"]) == "pat@example.org"
    assert link_in(message, "confirm").startswith("/confirm/")


def test_api_condition_sign_up_follows_the_vocabularys_words(client: TestClient, runtime: Runtime) -> None:
    teach(runtime, study("NCT02210780"))
    response = client.post("/api/subscriptions", json={"email": "c@example.org", "condition": "  atopic   DERMATITIS "})
    assert response.status_code == 202
    [sub] = subscriptions_of(runtime, "c@example.org")
    # Follows the phrase (its meaning is re-resolved as records teach it), named by what it means: the MeSH
    # terms of its concepts, not the words the visitor typed.
    with transaction(runtime.engine) as session:
        meant = vocabulary.meaning(session, "atopic dermatitis")
    assert "D003876" in {c.id for c in meant.concepts}
    assert (sub.kind, sub.target, sub.label) == ("condition", "atopic dermatitis", meant.name)
    assert meant.name is not None and meant.name.startswith("Dermatitis, Atopic")


HOSTILE = "Eczema URGENT: your account is locked, verify at https://evil.example/login \u202egnp.exe"


def test_api_unknown_condition_gets_suggestions_not_a_subscription(
    client: TestClient, runtime: Runtime, memory: MemoryTransport, inline: InlineEnqueue
) -> None:
    teach(runtime, study("NCT02210780"))
    response = client.post("/api/subscriptions", json={"email": "v@example.org", "condition": HOSTILE})
    assert response.status_code == 422
    body = response.json()
    assert body["detail"][0]["loc"] == ["body", "condition"]
    assert body["detail"][0]["type"] == "unknown_condition"
    assert body["suggestions"][0]["label"] == "Eczema"
    assert "evil" not in response.text and "URGENT" not in response.text
    assert subscriptions_of(runtime, "v@example.org") == []
    assert memory.messages == [] and inline.signups == []
    # The suggestion is accepted as it is offered.
    assert client.post("/api/subscriptions", json={"email": "v@example.org", "condition": "Eczema"}).status_code == 202
    [message] = memory.messages
    assert "Eczema" in str(message["Subject"])
    assert "evil" not in message.as_string()


def test_emails_and_pages_name_what_the_service_vouches_for(
    client: TestClient, runtime: Runtime, memory: MemoryTransport
) -> None:
    """Even a subscription made with an operator's wording is named by the vocabulary once it knows it."""
    teach(runtime)
    with transaction(runtime.engine) as session:
        target = subscriptions.condition_target("acute on chronic liver failure!!")
        signup = subscriptions.sign_up(session, "o@example.org", target, runtime.signer, runtime.hasher)
    InlineEnqueue(runtime).send_confirmation(signup.subscription_id)
    [message] = memory.messages
    assert "Acute-On-Chronic Liver Failure" in str(message["Subject"])
    assert "!!" not in message.as_string()
    page = client.get(link_in(message, "confirm"))
    assert "New studies for Acute-On-Chronic Liver Failure" in page.text
    # A trial: its registered title once the service has the record, else the NCT ID alone.
    client.post("/api/subscriptions", json={"email": "t@example.org", "trial": "NCT00000001"})
    assert "study NCT00000001" in str(memory.messages[-1]["Subject"])
    add_trial(runtime, "NCT00000002", "A Registered Title")
    client.post("/api/subscriptions", json={"email": "t@example.org", "trial": "NCT00000002"})
    assert "study NCT00000002: A Registered Title" in str(memory.messages[-1]["Subject"])


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "not-an-address", "trial": TRIAL}, "email"),
        ({"email": "a@example.org", "trial": "NCT123"}, "trial"),
        ({"email": "a@example.org", "trial": "NCT\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668"}, "trial"),
        ({"email": "a@example.org", "condition": " -- "}, "condition"),
        ({"trial": TRIAL}, "email"),
    ],
)
def test_api_invalid_input_is_422_with_field_errors(
    client: TestClient, runtime: Runtime, body: dict[str, str], field: str
) -> None:
    response = client.post("/api/subscriptions", json=body)
    assert response.status_code == 422
    assert any(err["loc"][-1] == field for err in response.json()["detail"])
    assert subscriptions_of(runtime, "a@example.org") == []


@pytest.mark.parametrize(
    "body",
    [
        {"email": "a@example.org"},
        {"email": "a@example.org", "trial": TRIAL, "condition": "asthma"},
    ],
)
def test_api_needs_exactly_one_target(client: TestClient, body: dict[str, str]) -> None:
    response = client.post("/api/subscriptions", json=body)
    assert response.status_code == 422
    assert "exactly one" in response.text


def test_api_refuses_null_targets_as_its_schema_says(client: TestClient) -> None:
    response = client.post("/api/subscriptions", json={"email": "a@example.org", "trial": TRIAL, "condition": None})
    assert response.status_code == 422
    assert "not null" in response.text


def test_api_answers_the_same_for_new_pending_and_active_addresses(
    client: TestClient, runtime: Runtime, memory: MemoryTransport
) -> None:
    follow(runtime, "active@example.org", trial=TRIAL)
    client.post("/api/subscriptions", json={"email": "pending@example.org", "trial": TRIAL})
    answers = [
        client.post("/api/subscriptions", json={"email": email, "trial": TRIAL})
        for email in ("new@example.org", "pending@example.org", "active@example.org")
    ]
    assert {r.status_code for r in answers} == {202}
    assert len({r.content for r in answers}) == 1
    assert len({frozenset((k, v) for k, v in r.headers.items() if k != "date") for r in answers}) == 1


def test_resubmitting_never_downgrades_an_active_subscription(
    client: TestClient, runtime: Runtime, memory: MemoryTransport
) -> None:
    follow(runtime, "a@example.org", trial=TRIAL)
    assert client.post("/api/subscriptions", json={"email": "A@example.org", "trial": TRIAL}).status_code == 202
    [sub] = subscriptions_of(runtime, "a@example.org")
    assert sub.status == SubscriptionStatus.ACTIVE
    assert memory.messages == []  # no confirmation for what is already confirmed


def test_form_offers_the_trial_with_its_title_and_its_condition(client: TestClient, runtime: Runtime) -> None:
    teach(runtime)
    add_trial(runtime, TRIAL, "Liver Support in <Acute> Failure")
    page = client.get(
        "/subscribe", params=[("trial", TRIAL), ("condition", "liver failure"), ("condition", "Call +1 555 0100 now")]
    )
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    text = page.text
    assert 'action="/subscribe"' in text
    assert 'name="trial" value="NCT06740149" checked' in text
    # Offered in the vocabulary's words, not pre-ticked; a phrase it does not know is not offered at all.
    assert 'name="condition" value="Liver Failure">' in text
    assert "555" not in text
    assert "Liver Support in &lt;Acute&gt; Failure" in text  # escaped, never raw HTML
    assert '<label for="email">Email address</label>' in text
    # No site is allowed to frame it until ALERTS_EMBED_ORIGINS names one (tests/web/test_embedding.py).
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"


def test_form_without_a_target_asks_for_one(client: TestClient) -> None:
    page = client.get("/subscribe")
    assert page.status_code == 200
    assert 'id="trial" name="trial" type="text"' in page.text
    assert 'id="condition" name="condition" type="text"' in page.text


def test_form_with_a_bad_study_number_explains(client: TestClient) -> None:
    page = client.get("/subscribe", params={"trial": "NCT1<script>"})
    assert page.status_code == 400
    assert "doesn&#39;t look right" in page.text or "doesn't look right" in page.text
    assert "<script>" not in page.text


def test_form_can_sign_up_for_the_trial_and_its_condition_with_one_email(
    client: TestClient, runtime: Runtime, memory: MemoryTransport
) -> None:
    teach(runtime)
    response = client.post(
        "/subscribe",
        data={
            "email": "both@example.org",
            "offered_trial": TRIAL,
            "offered_condition": "Liver Failure",
            "trial": TRIAL,
            "condition": "Liver Failure",
        },
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/subscribe/sent"
    subs = subscriptions_of(runtime, "both@example.org")
    assert [(s.kind, s.label, s.status) for s in subs] == [
        ("trial", TRIAL, "pending"),
        ("condition", "Liver Failure", "pending"),
    ]
    # One submission, one email, naming both; its one link confirms both.
    [message] = memory.messages
    assert str(message["Subject"]) == "Please confirm your 2 alerts"
    body = text_of(message)
    assert f"changes to study {TRIAL}" in body and "new studies for Liver Failure" in body
    link = link_in(message, "confirm")
    page = client.get(link)
    assert "Confirm your alerts" in page.text and "New studies for Liver Failure" in page.text
    assert client.post(link).status_code == 200
    assert [s.status for s in subscriptions_of(runtime, "both@example.org")] == ["active", "active"]
    sent = client.get("/subscribe/sent")
    assert sent.status_code == 200
    assert "Check your inbox" in sent.text
    assert "both@example.org" not in sent.text


def test_form_offers_suggestions_for_a_condition_it_does_not_know(
    client: TestClient, runtime: Runtime, memory: MemoryTransport
) -> None:
    teach(runtime, study("NCT02210780"))
    page = client.post("/subscribe", data={"email": "s@example.org", "condition": HOSTILE})
    assert page.status_code == 422
    assert "We don't know that condition" in page.text or "We don&#39;t know that condition" in page.text
    assert 'type="radio" id="suggested-1" name="condition" value="Eczema"' in page.text
    # The typed text is not shown again ("evil" alone would match the time zone Africa/Libreville).
    assert "evil.example" not in page.text and "URGENT" not in page.text
    assert subscriptions_of(runtime, "s@example.org") == [] and memory.messages == []
    # Picking the suggestion signs up.
    chosen = client.post("/subscribe", data={"email": "s@example.org", "condition": "Eczema"}, follow_redirects=False)
    assert chosen.status_code == 303
    assert [s.label for s in subscriptions_of(runtime, "s@example.org")] == ["Eczema"]


def test_a_plain_embedded_form_post_works(client: TestClient, runtime: Runtime) -> None:
    """A trial page may post email + trial straight from its own form (no cookies, no CSRF token)."""
    response = client.post(
        "/subscribe",
        content=f"email=e%40example.org&trial={TRIAL}".encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded", "Origin": "https://trials.example.com"},
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert [s.target for s in subscriptions_of(runtime, "e@example.org")] == [TRIAL]


def test_form_answers_the_same_for_known_and_unknown_addresses(client: TestClient, runtime: Runtime) -> None:
    follow(runtime, "known@example.org", trial=TRIAL)
    answers = [
        client.post("/subscribe", data={"email": email, "trial": TRIAL}, follow_redirects=False)
        for email in ("known@example.org", "unknown@example.org")
    ]
    assert [r.status_code for r in answers] == [303, 303]
    assert answers[0].content == answers[1].content
    assert answers[0].headers["location"] == answers[1].headers["location"] == "/subscribe/sent"


def test_form_errors_are_shown_without_echoing_the_address(client: TestClient, runtime: Runtime) -> None:
    teach(runtime)
    response = client.post(
        "/subscribe",
        data={"email": "who@@example", "offered_trial": TRIAL, "offered_condition": "Liver Failure"},
    )
    assert response.status_code == 422
    text = response.text
    assert "Enter a valid email address" in text
    assert "Choose at least one alert" in text
    assert 'aria-invalid="true"' in text
    assert "who@@example" not in text
    # The choices are still there to tick.
    assert 'name="trial" value="NCT06740149">' in text
    assert 'name="condition" value="Liver Failure">' in text
    assert subscriptions_of(runtime, "who@example") == []


def test_form_reports_a_bad_typed_study_number(client: TestClient) -> None:
    response = client.post("/subscribe", data={"email": "a@example.org", "trial": "12345"})
    assert response.status_code == 422
    assert "NCT followed by 8 digits" in response.text
    assert 'value="12345"' in response.text


def test_no_address_in_urls_or_logs(client: TestClient, runtime: Runtime, memory: MemoryTransport) -> None:
    teach(runtime)
    with capture_logs() as logs:
        client.post("/api/subscriptions", json={"email": "secret.person@example.org", "trial": TRIAL})
        response = client.post("/subscribe", data={"email": "secret.person@example.org", "condition": "liver failure"})
    assert response.status_code == 200  # followed the redirect
    assert "secret" not in str(response.url)
    assert logs, "sign-ups are logged"
    assert "secret.person" not in repr(logs)
    for message in memory.messages:
        for path in (link_in(message, "confirm"),):
            assert "secret" not in path and "@" not in path
