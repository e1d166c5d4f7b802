"""The links in emails: confirm, unsubscribe (incl. RFC 8058 one-click) and manage, over HTTP."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from alerts import subscriptions as subscriptions_module
from alerts.db import transaction
from alerts.models import Delivery, Subscriber, SubscriptionStatus
from alerts.pipeline import ingest
from alerts.runtime import Runtime
from alerts.tokens import Purpose
from alerts.transports.memory import MemoryTransport
from tests.conftest import InlineEnqueue, study
from tests.factories import changed_event, follow, open_recruitment
from tests.web.journey import (
    add_trial,
    link_in,
    list_unsubscribe_path,
    manage_token_of,
    rows_mentioning,
    snapshot,
    subscription,
    subscriptions_of,
    teach,
)

TRIAL = "NCT06740149"
EIGHT_DAYS = 8 * 24 * 3600


def sign_up(client: TestClient, email: str, **target: str) -> None:
    assert client.post("/api/subscriptions", json={"email": email, **target}).status_code == 202


def confirm_path(client: TestClient, memory: MemoryTransport, email: str, **target: str) -> str:
    memory.clear()
    sign_up(client, email, **target)
    [message] = memory.messages
    return link_in(message, "confirm")


def old_confirm_token(runtime: Runtime, subscription_id: int, monkeypatch: pytest.MonkeyPatch) -> str:
    """A genuine confirmation token signed eight days ago (the default lifetime is seven)."""
    real = time.time
    with monkeypatch.context() as patch:
        patch.setattr(time, "time", lambda: real() - EIGHT_DAYS)
        return runtime.signer.sign(Purpose.CONFIRM, subscription_id)


# --- confirm ------------------------------------------------------------------------------------------


def test_get_and_head_never_confirm(client: TestClient, runtime: Runtime, memory: MemoryTransport) -> None:
    path = confirm_path(client, memory, "a@example.org", trial=TRIAL)
    before = snapshot(runtime)
    page = client.get(path)
    assert page.status_code == 200
    assert f'<form method="post" action="{path}">' in page.text
    assert ">Confirm</button>" in page.text
    assert client.head(path).status_code == 200
    assert snapshot(runtime) == before


def test_post_confirms_and_twice_is_harmless(client: TestClient, runtime: Runtime, memory: MemoryTransport) -> None:
    path = confirm_path(client, memory, "a@example.org", trial=TRIAL)
    first = client.post(path)
    assert first.status_code == 200
    assert "You're subscribed" in first.text or "You&#39;re subscribed" in first.text
    [sub] = subscriptions_of(runtime, "a@example.org")
    assert sub.status == SubscriptionStatus.ACTIVE
    confirmed_at = sub.confirmed_at
    again = client.post(path)
    assert again.status_code == 200
    assert "Already confirmed" in again.text
    assert subscriptions_of(runtime, "a@example.org")[0].confirmed_at == confirmed_at
    assert "Already confirmed" in client.get(path).text


def test_confirm_page_names_the_trial(client: TestClient, runtime: Runtime, memory: MemoryTransport) -> None:
    add_trial(runtime, TRIAL, "A study of <b>things</b>")
    page = client.get(confirm_path(client, memory, "a@example.org", trial=TRIAL))
    assert "Changes to study NCT06740149: A study of &lt;b&gt;things&lt;/b&gt;" in page.text


def test_an_old_link_does_not_revive_an_unsubscribed_alert(
    client: TestClient, runtime: Runtime, memory: MemoryTransport
) -> None:
    path = confirm_path(client, memory, "a@example.org", trial=TRIAL)
    client.post(path)
    sub = subscriptions_of(runtime, "a@example.org")[0]
    client.post(f"/unsubscribe/{sub.unsubscribe_token}")
    response = client.post(path)
    assert response.status_code == 410
    assert "sign up again" in response.text
    assert subscriptions_of(runtime, "a@example.org")[0].status == SubscriptionStatus.UNSUBSCRIBED


def test_expired_link_offers_a_resend(
    client: TestClient, runtime: Runtime, memory: MemoryTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    sign_up(client, "late@example.org", trial=TRIAL)
    [sub] = subscriptions_of(runtime, "late@example.org")
    token = old_confirm_token(runtime, sub.id, monkeypatch)
    before = snapshot(runtime)
    page = client.get(f"/confirm/{token}")
    assert page.status_code == 410
    assert "expired" in page.text
    assert f'action="/confirm/{token}/resend"' in page.text
    refused = client.post(f"/confirm/{token}")
    assert refused.status_code == 410
    assert snapshot(runtime) == before  # an expired link confirms nothing

    memory.clear()
    resent = client.post(f"/confirm/{token}/resend")
    assert resent.status_code == 200
    assert "new link" in resent.text
    [message] = memory.messages
    assert str(message["To"]) == "late@example.org"
    fresh = link_in(message, "confirm")
    assert client.post(fresh).status_code == 200
    assert subscription(runtime, sub.id).status == SubscriptionStatus.ACTIVE
    # Once confirmed, the old link (and its resend button) just say so.
    memory.clear()
    assert "Already confirmed" in client.get(f"/confirm/{token}").text
    assert "Already confirmed" in client.post(f"/confirm/{token}/resend").text
    assert memory.messages == []


def test_one_link_for_a_whole_sign_up_expires_and_is_resent_as_one(
    client: TestClient, runtime: Runtime, memory: MemoryTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    teach(runtime)
    form = {
        "email": "many@example.org",
        "trial": TRIAL,
        "condition": ["Liver Failure", "Acute-On-Chronic Liver Failure"],
    }
    client.post("/subscribe", data=form)
    subs = subscriptions_of(runtime, "many@example.org")
    assert len(subs) == 3
    with monkeypatch.context() as patch:
        real = time.time
        patch.setattr(time, "time", lambda: real() - 8 * 86400)
        token = runtime.signer.sign(Purpose.CONFIRM, [s.id for s in subs])
    # One of them was turned off meanwhile (from the manage page): it is not revived by the old link.
    with transaction(runtime.engine) as session:
        subscriptions_module.unsubscribe(session, subs[1].id)
    page = client.get(f"/confirm/{token}")
    assert page.status_code == 410
    assert "Changes to study NCT06740149" in page.text and "Acute-On-Chronic Liver Failure" in page.text
    memory.clear()
    assert client.post(f"/confirm/{token}/resend").status_code == 200
    [message] = memory.messages  # one email for the two still waiting
    assert str(message["Subject"]) == "Please confirm your 2 alerts"
    assert client.post(link_in(message, "confirm")).status_code == 200
    statuses = [s.status for s in subscriptions_of(runtime, "many@example.org")]
    assert statuses == [SubscriptionStatus.ACTIVE, SubscriptionStatus.UNSUBSCRIBED, SubscriptionStatus.ACTIVE]


def test_resend_with_a_valid_link_just_shows_it(client: TestClient, runtime: Runtime, memory: MemoryTransport) -> None:
    path = confirm_path(client, memory, "a@example.org", trial=TRIAL)
    memory.clear()
    page = client.post(f"{path}/resend")
    assert page.status_code == 200
    assert ">Confirm</button>" in page.text
    assert memory.messages == []


@pytest.mark.parametrize("kind", ["confirm", "unsubscribe", "manage"])
def test_tampered_and_cross_purpose_tokens_fail_cleanly(client: TestClient, runtime: Runtime, kind: str) -> None:
    sub_id = follow(runtime, "a@example.org", trial=TRIAL)
    sub = subscription(runtime, sub_id)
    tokens = {
        "confirm": runtime.signer.sign(Purpose.CONFIRM, sub_id),
        "unsubscribe": sub.unsubscribe_token,
        "manage": manage_token_of(runtime, "a@example.org"),
    }
    before = snapshot(runtime)
    wrong = [token for purpose, token in tokens.items() if purpose != kind]
    own = tokens[kind]
    tampered = [own[:-2] + ("AA" if not own.endswith("AA") else "BB"), own + "x", own[:10], "nonsense", "a" * 2000]
    posts = {"confirm": ["", "/resend"], "unsubscribe": [""], "manage": ["/unsubscribe", "/erase"]}[kind]
    for token in [*wrong, *tampered]:
        attempts = [("GET", f"/{kind}/{token}"), ("HEAD", f"/{kind}/{token}")]
        attempts += [("POST", f"/{kind}/{token}{suffix}") for suffix in posts]
        for method, path in attempts:
            response = client.request(
                method, path, data={"confirm": "yes", "scope": "all"} if method == "POST" else None
            )
            assert response.status_code == 400, (method, path)
            if method == "HEAD":
                continue
            assert "This link doesn" in response.text
            assert "Traceback" not in response.text
    assert snapshot(runtime) == before


def test_links_for_erased_subscribers_are_gone(client: TestClient, runtime: Runtime) -> None:
    sub_id = follow(runtime, "a@example.org", trial=TRIAL)
    manage = manage_token_of(runtime, "a@example.org")
    unsubscribe = subscription(runtime, sub_id).unsubscribe_token
    confirm = runtime.signer.sign(Purpose.CONFIRM, sub_id)
    assert client.post(f"/manage/{manage}/erase", data={"confirm": "yes"}).status_code == 200
    for path in (f"/manage/{manage}", f"/unsubscribe/{unsubscribe}", f"/confirm/{confirm}"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert "no longer valid" in response.text
    # A one-click unsubscribe for an erased address still gets what it asked for: nothing more is sent.
    assert client.post(f"/unsubscribe/{unsubscribe}", data={"List-Unsubscribe": "One-Click"}).status_code == 200


# --- unsubscribe --------------------------------------------------------------------------------------


def test_unsubscribe_page_changes_nothing(client: TestClient, runtime: Runtime) -> None:
    sub_id = follow(runtime, "a@example.org", trial=TRIAL)
    follow(runtime, "a@example.org", condition="asthma")
    token = subscription(runtime, sub_id).unsubscribe_token
    before = snapshot(runtime)
    page = client.get(f"/unsubscribe/{token}")
    assert page.status_code == 200
    assert "Unsubscribe from this alert" in page.text
    assert 'name="scope" value="all"' in page.text
    assert client.head(f"/unsubscribe/{token}").status_code == 200
    assert snapshot(runtime) == before


@pytest.mark.parametrize("encoding", ["urlencoded", "multipart"])
def test_one_click_unsubscribe(client: TestClient, runtime: Runtime, encoding: str) -> None:
    """As Gmail and others send it: a POST with List-Unsubscribe=One-Click, no cookies, no redirect."""
    sub_id = follow(runtime, "a@example.org", trial=TRIAL)
    other = follow(runtime, "a@example.org", condition="asthma")
    path = f"/unsubscribe/{subscription(runtime, sub_id).unsubscribe_token}"
    if encoding == "urlencoded":
        body = b"List-Unsubscribe=One-Click"
        content_type = "application/x-www-form-urlencoded"
    else:
        boundary = "----one-click-boundary"
        body = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="List-Unsubscribe"\r\n\r\n'
            f"One-Click\r\n--{boundary}--\r\n"
        ).encode()
        content_type = f"multipart/form-data; boundary={boundary}"
    client.cookies.clear()
    for _ in range(2):  # idempotent
        response = client.post(path, content=body, headers={"Content-Type": content_type}, follow_redirects=False)
        assert response.status_code == 200
        assert "location" not in response.headers
        assert "set-cookie" not in response.headers
        assert subscription(runtime, sub_id).status == SubscriptionStatus.UNSUBSCRIBED
    assert subscription(runtime, other).status == SubscriptionStatus.ACTIVE  # only this alert


def test_unsubscribe_needs_no_particular_body(client: TestClient, runtime: Runtime) -> None:
    sub_id = follow(runtime, "a@example.org", trial=TRIAL)
    path = f"/unsubscribe/{subscription(runtime, sub_id).unsubscribe_token}"
    broken = client.post(path, content=b"--x\r\ngarbage", headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert broken.status_code == 200
    assert subscription(runtime, sub_id).status == SubscriptionStatus.UNSUBSCRIBED


def test_unsubscribe_from_all_alerts(client: TestClient, runtime: Runtime) -> None:
    ids = [follow(runtime, "a@example.org", trial=TRIAL), follow(runtime, "a@example.org", condition="asthma")]
    someone_else = follow(runtime, "b@example.org", trial=TRIAL)
    response = client.post(f"/unsubscribe/{subscription(runtime, ids[0]).unsubscribe_token}", data={"scope": "all"})
    assert response.status_code == 200
    assert "any more alerts" in response.text
    assert [subscription(runtime, i).status for i in ids] == ["unsubscribed", "unsubscribed"]
    assert subscription(runtime, someone_else).status == SubscriptionStatus.ACTIVE


def test_unsubscribe_token_works_years_later(
    client: TestClient, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    sub_id = follow(runtime, "a@example.org", trial=TRIAL)
    token = subscription(runtime, sub_id).unsubscribe_token
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 10 * 365 * 24 * 3600)
    assert client.post(f"/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"}).status_code == 200
    assert subscription(runtime, sub_id).status == SubscriptionStatus.UNSUBSCRIBED


def test_alert_email_links_work(
    client: TestClient, runtime: Runtime, memory: MemoryTransport, inline: InlineEnqueue
) -> None:
    follow(runtime, "a@example.org", trial="NCT00124774")
    record = study("NCT00124774")
    ingest(runtime, changed_event(record), inline, source="test")
    memory.clear()
    ingest(runtime, changed_event(open_recruitment(record)), inline, source="test")
    [alert] = memory.messages
    assert alert["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    manage = client.get(link_in(alert, "manage"))
    assert manage.status_code == 200
    path = list_unsubscribe_path(alert)
    assert path == link_in(alert, "unsubscribe")
    assert client.post(path, data={"List-Unsubscribe": "One-Click"}).status_code == 200
    [sub] = subscriptions_of(runtime, "a@example.org")
    assert sub.status == SubscriptionStatus.UNSUBSCRIBED


# --- manage -------------------------------------------------------------------------------------------


def test_manage_lists_subscriptions_with_titles_and_status(client: TestClient, runtime: Runtime) -> None:
    add_trial(runtime, TRIAL, "Plasma Exchange for Liver Failure")
    follow(runtime, "a@example.org", trial=TRIAL)
    follow(runtime, "a@example.org", trial="NCT99999999")
    follow(runtime, "a@example.org", condition="Acute-On-Chronic Liver Failure")
    teach(runtime)
    client.post("/api/subscriptions", json={"email": "a@example.org", "condition": "liver failure"})
    follow(runtime, "other@example.org", condition="gout")
    token = manage_token_of(runtime, "a@example.org")
    before = snapshot(runtime)
    page = client.get(f"/manage/{token}")
    assert page.status_code == 200
    text = page.text
    assert "Changes to study NCT06740149" in text
    assert "Plasma Exchange for Liver Failure" in text
    assert "Changes to study NCT99999999" in text
    assert "New studies for Acute-On-Chronic Liver Failure" in text
    assert "New studies for Liver Failure" in text
    assert "Waiting for you to confirm" in text
    assert text.count(">Active<") == 3
    assert "gout" not in text
    assert "a@example.org" not in text  # the page never shows the address
    assert page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["cache-control"] == "no-store"
    assert client.head(f"/manage/{token}").status_code == 200
    assert snapshot(runtime) == before


def test_manage_unsubscribes_one_or_all(client: TestClient, runtime: Runtime) -> None:
    first = follow(runtime, "a@example.org", trial=TRIAL)
    second = follow(runtime, "a@example.org", condition="asthma")
    stranger = follow(runtime, "b@example.org", condition="asthma")
    token = manage_token_of(runtime, "a@example.org")
    response = client.post(f"/manage/{token}/unsubscribe", data={"subscription": str(first)})
    assert response.status_code == 200
    assert "You&#39;re unsubscribed from" in response.text or "You're unsubscribed from" in response.text
    assert subscription(runtime, first).status == SubscriptionStatus.UNSUBSCRIBED
    assert subscription(runtime, second).status == SubscriptionStatus.ACTIVE
    # Another subscriber's id in the form does nothing.
    client.post(f"/manage/{token}/unsubscribe", data={"subscription": str(stranger)})
    assert subscription(runtime, stranger).status == SubscriptionStatus.ACTIVE
    client.post(f"/manage/{token}/unsubscribe", data={"scope": "all"})
    assert subscription(runtime, second).status == SubscriptionStatus.UNSUBSCRIBED


def test_erase_needs_the_confirmation_box(client: TestClient, runtime: Runtime) -> None:
    follow(runtime, "a@example.org", trial=TRIAL)
    token = manage_token_of(runtime, "a@example.org")
    before = snapshot(runtime)
    response = client.post(f"/manage/{token}/erase", data={})
    assert response.status_code == 400
    assert "Tick the box" in response.text
    assert snapshot(runtime) == before


def test_erase_leaves_no_trace_of_the_address(
    client: TestClient, runtime: Runtime, memory: MemoryTransport, inline: InlineEnqueue
) -> None:
    address = "erase.me@example.org"
    follow(runtime, address, trial="NCT00124774")
    follow(runtime, address, condition="Herniated Disc")
    client.post("/api/subscriptions", json={"email": "Erase.Me@Example.org", "condition": "asthma"})
    record = study("NCT00124774")
    ingest(runtime, changed_event(record), inline, source="test")
    ingest(runtime, changed_event(open_recruitment(record)), inline, source="test")
    with transaction(runtime.engine) as session:
        assert session.scalar(select(Delivery.id).where(Delivery.subscriber_id.is_not(None))) is not None
    address_hash = runtime.hasher(address)
    assert rows_mentioning(runtime, address)  # the test can see it before

    token = manage_token_of(runtime, address)
    done = client.post(f"/manage/{token}/erase", data={"confirm": "yes"})
    assert done.status_code == 200
    assert "Your data has been deleted" in done.text
    assert rows_mentioning(runtime, address) == []
    assert rows_mentioning(runtime, address_hash) == []
    with transaction(runtime.engine) as session:
        assert session.scalar(select(Subscriber.id)) is None
        # Delivery history stays, with nobody attached.
        assert session.scalar(select(Delivery.id)) is not None
        assert session.scalar(select(Delivery.id).where(Delivery.subscriber_id.is_not(None))) is None
    gone = client.get(f"/manage/{token}")
    assert gone.status_code == 404
    assert "no longer valid" in gone.text
    # A second click on "delete" (or a reload) is harmless.
    assert client.post(f"/manage/{token}/erase", data={"confirm": "yes"}).status_code == 200


def test_link_pages_read_through_the_async_store_on_postgresql_only(client: TestClient, runtime: Runtime) -> None:
    # SQLite, the embedded default, keeps the ORM path; PostgreSQL reads each link page in one statement.
    store = getattr(client.app, "state").linkstore  # noqa: B009
    assert (store is not None) == (runtime.engine.dialect.name == "postgresql")
    subscription_id = follow(runtime, "store@example.org", trial=TRIAL)
    token = runtime.signer.sign(Purpose.UNSUBSCRIBE, subscription_id)
    for method in ("GET", "HEAD"):
        answer = client.request(method, f"/unsubscribe/{token}")
        assert answer.status_code == 200
        assert answer.headers["content-security-policy"].endswith("frame-ancestors 'none'")
    assert f"Changes to study {TRIAL}</p>" in client.get(f"/unsubscribe/{token}").text
    assert client.get(f"/unsubscribe/{token}x").status_code == 400


def test_link_pages_survive_their_connections_being_cut(client: TestClient, runtime: Runtime) -> None:
    """PostgreSQL restarted (its backends gone): the next page still answers, on a new connection."""
    if runtime.engine.dialect.name != "postgresql":
        pytest.skip("the async store exists on PostgreSQL only")
    from sqlalchemy import text

    from alerts.web.linkstore import application_name

    subscription_id = follow(runtime, "cut@example.org", trial=TRIAL)
    token = runtime.signer.sign(Purpose.UNSUBSCRIBE, subscription_id)
    assert client.get(f"/unsubscribe/{token}").status_code == 200
    with runtime.engine.connect() as connection:
        cut = connection.execute(
            text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = :name"),
            {"name": application_name()},
        ).scalar_one()
        connection.commit()
    assert cut >= 1
    assert client.get(f"/unsubscribe/{token}").status_code == 200
    assert client.post(f"/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"}).status_code == 200


def test_people_do_not_wait_behind_a_burst_of_page_reads(client: TestClient, runtime: Runtime) -> None:
    """Every connection of the pages' pool busy (a scanner burst): one-click unsubscribes and sign-ups still go
    through at once, on the people's own pool."""
    if runtime.engine.dialect.name != "postgresql":
        pytest.skip("the async store exists on PostgreSQL only")
    store = getattr(client.app, "state").linkstore  # noqa: B009
    portal = client.portal
    assert portal is not None
    subscription_id = follow(runtime, "busy@example.org", trial=TRIAL)
    token = runtime.signer.sign(Purpose.UNSUBSCRIBE, subscription_id)
    held = [portal.call(store.pool.getconn) for _ in range(store.pool.max_size)]
    try:
        started = time.monotonic()
        assert client.post(f"/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"}).status_code == 200
        signup = client.post("/api/subscriptions", json={"email": "during@example.org", "trial": TRIAL})
        assert signup.status_code == 202
        assert time.monotonic() - started < 10  # the pages' pool would have made them wait its 30 s timeout
    finally:
        for connection in held:
            portal.call(store.pool.putconn, connection)
    assert client.get(f"/unsubscribe/{token}").status_code == 200
