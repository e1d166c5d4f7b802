"""SendGrid webhook events applied directly (alerts.webhooks), on both databases."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from alerts.db import transaction
from alerts.models import Delivery, Subscriber, Subscription, Suppression, WebhookEvent
from alerts.pipeline import Rejected, ingest
from alerts.runtime import Runtime
from alerts.suppressions import address_hash
from alerts.webhooks import apply_events, slim
from tests.conftest import InlineEnqueue, study
from tests.factories import follow, new_trial_event


def send_alert(runtime: Runtime, inline: InlineEnqueue, *emails: str) -> dict[str, Delivery]:
    """One new-trial alert to each address (memory transport); their deliveries by address."""
    for email in emails:
        follow(runtime, email, condition="herniated disc")
    outcome = ingest(runtime, new_trial_event(study("NCT00124774"), "Herniated Disc"), inline, "test")
    assert not isinstance(outcome, Rejected)
    with transaction(runtime.engine) as session:
        rows = session.scalars(select(Delivery).order_by(Delivery.id)).all()
        by_subscriber = {s.id: s.email for s in session.scalars(select(Subscriber))}
        return {by_subscriber[r.subscriber_id]: r for r in rows if r.subscriber_id is not None}


def event(kind: str, email: str, delivery: Delivery | None, n: int = 1, **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "email": email,
        "event": kind,
        "timestamp": 1_800_000_000 + n,
        "sg_event_id": f"{kind}-{email}-{n}",
        "sg_message_id": "unknown.filterdrecv-1.0",
        "smtp-id": "<x@sendgrid.net>",
        "category": ["alert"],
    }
    if delivery is not None:
        data["delivery_id"] = str(delivery.id)
    return data | extra


def reload(runtime: Runtime, delivery: Delivery) -> Delivery:
    with transaction(runtime.engine) as session:
        row = session.get(Delivery, delivery.id)
        assert row is not None
        return row


def suppressions(runtime: Runtime) -> dict[str, Suppression]:
    with transaction(runtime.engine) as session:
        return {s.email_hash: s for s in session.scalars(select(Suppression))}


def count(runtime: Runtime, model: Any) -> int:
    with transaction(runtime.engine) as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_duplicate_events_are_applied_once(runtime: Runtime, inline: InlineEnqueue) -> None:
    sent = send_alert(runtime, inline, "a@example.org", "b@example.org")
    events = [
        event("bounce", "a@example.org", sent["a@example.org"], type="bounce", reason="550 no such user"),
        event("spamreport", "b@example.org", sent["b@example.org"]),
    ]
    first = apply_events(runtime.engine, runtime.hasher, [*events, dict(events[0])])  # duplicated in one post
    assert (first.applied, first.duplicates, first.suppressed) == (2, 1, 2)
    again = apply_events(runtime.engine, runtime.hasher, events)  # SendGrid's retry of the same post
    assert (again.applied, again.duplicates, again.suppressed, again.failed_deliveries) == (0, 2, 0, 0)
    assert count(runtime, WebhookEvent) == 2 and count(runtime, Suppression) == 2


def test_hard_bounce_fails_the_delivery_and_suppresses_the_address_by_hash(
    runtime: Runtime, inline: InlineEnqueue
) -> None:
    sent = send_alert(runtime, inline, "gone@example.org")
    reason = "550 5.1.1 <gone@example.org>: Recipient address rejected: User unknown"
    apply_events(
        runtime.engine,
        runtime.hasher,
        [event("bounce", "gone@example.org", sent["gone@example.org"], type="bounce", reason=reason)],
    )
    row = reload(runtime, sent["gone@example.org"])
    assert row.status == "failed" and row.error is not None and row.error.startswith("bounce: 550 5.1.1")
    assert "gone@example.org" not in row.error, "no address in delivery history"
    (suppression,) = suppressions(runtime).values()
    assert suppression.email_hash == address_hash(runtime.hasher, "Gone@Example.org")
    assert (suppression.reason, suppression.source) == ("bounce", "sendgrid:bounce")
    assert "@" not in (suppression.detail or "") + suppression.email_hash


def test_blocked_bounce_fails_the_delivery_but_keeps_the_address(runtime: Runtime, inline: InlineEnqueue) -> None:
    sent = send_alert(runtime, inline, "a@example.org")
    apply_events(
        runtime.engine,
        runtime.hasher,
        [event("bounce", "a@example.org", sent["a@example.org"], type="blocked", reason="IP listed")],
    )
    row = reload(runtime, sent["a@example.org"])
    assert row.status == "failed" and row.error == "blocked: IP listed"
    assert suppressions(runtime) == {}


def test_dropped_suppresses_only_for_address_reasons(runtime: Runtime, inline: InlineEnqueue) -> None:
    sent = send_alert(runtime, inline, "bounced@example.org", "spammy@example.org", "invalid@example.org")
    apply_events(
        runtime.engine,
        runtime.hasher,
        [
            event("dropped", "bounced@example.org", sent["bounced@example.org"], reason="Bounced Address"),
            event("dropped", "spammy@example.org", sent["spammy@example.org"], reason="Spam Content"),
            event("dropped", "invalid@example.org", sent["invalid@example.org"], reason="Invalid SMTPAPI header"),
        ],
    )
    assert {reload(runtime, d).status for d in sent.values()} == {"failed"}
    hashes = set(suppressions(runtime))
    assert hashes == {address_hash(runtime.hasher, a) for a in ("bounced@example.org", "invalid@example.org")}


def test_spam_report_suppresses_without_touching_the_delivery(runtime: Runtime, inline: InlineEnqueue) -> None:
    sent = send_alert(runtime, inline, "a@example.org")
    apply_events(runtime.engine, runtime.hasher, [event("spamreport", "a@example.org", sent["a@example.org"])])
    assert reload(runtime, sent["a@example.org"]).status == "sent"
    assert [s.reason for s in suppressions(runtime).values()] == ["spamreport"]


def test_unsubscribe_ends_that_subscription_only(runtime: Runtime, inline: InlineEnqueue) -> None:
    sent = send_alert(runtime, inline, "a@example.org")
    other = follow(runtime, "a@example.org", trial="NCT04015791")
    apply_events(runtime.engine, runtime.hasher, [event("group_unsubscribe", "a@example.org", sent["a@example.org"])])
    with transaction(runtime.engine) as session:
        statuses = {s.id: s.status for s in session.scalars(select(Subscription))}
    assert statuses[sent["a@example.org"].subscription_id or 0] == "unsubscribed"
    assert statuses[other] == "active"
    assert suppressions(runtime) == {}


def test_unsubscribe_without_a_delivery_of_ours_ends_every_subscription_of_the_address(
    runtime: Runtime, inline: InlineEnqueue
) -> None:
    follow(runtime, "a@example.org", trial="NCT04015791")
    follow(runtime, "a@example.org", condition="asthma")
    follow(runtime, "b@example.org", condition="asthma")
    report = apply_events(runtime.engine, runtime.hasher, [event("unsubscribe", "A@example.org", None)])
    assert (report.unmatched, report.unsubscribed) == (1, 2)
    with transaction(runtime.engine) as session:
        assert sorted(s.status for s in session.scalars(select(Subscription))) == [
            "active",
            "unsubscribed",
            "unsubscribed",
        ]


def test_delivery_found_by_message_id_when_no_delivery_id(runtime: Runtime, inline: InlineEnqueue) -> None:
    sent = send_alert(runtime, inline, "a@example.org", "b@example.org")
    delivery = sent["b@example.org"]
    assert delivery.provider_message_id
    bounce = event("bounce", "b@example.org", None, reason="550 unknown")
    bounce["sg_message_id"] = f"{delivery.provider_message_id}.filterdrecv-p3mdw1-1.0"
    report = apply_events(runtime.engine, runtime.hasher, [bounce])
    assert report.unmatched == 0
    assert reload(runtime, delivery).status == "failed"
    assert reload(runtime, sent["a@example.org"]).status == "sent"
    with transaction(runtime.engine) as session:
        assert session.scalar(select(WebhookEvent.delivery_id)) == delivery.id


def test_delivered_and_deferred_notes_never_undo_a_bounce(runtime: Runtime, inline: InlineEnqueue) -> None:
    sent = send_alert(runtime, inline, "a@example.org", "b@example.org")
    a, b = sent["a@example.org"], sent["b@example.org"]
    apply_events(runtime.engine, runtime.hasher, [event("deferred", "a@example.org", a, response="421 try later")])
    assert reload(runtime, a).error == "deferred by the receiving server: 421 try later"
    apply_events(runtime.engine, runtime.hasher, [event("delivered", "a@example.org", a)])
    assert (reload(runtime, a).status, reload(runtime, a).error) == ("sent", None)
    apply_events(
        runtime.engine,
        runtime.hasher,
        [
            event("bounce", "b@example.org", b, n=2, type="bounce", reason="550 gone"),
            event("delivered", "b@example.org", b, n=1),  # arrives late, out of order
        ],
    )
    assert reload(runtime, b).status == "failed"


def test_other_events_and_junk_are_ignored(runtime: Runtime, inline: InlineEnqueue) -> None:
    sent = send_alert(runtime, inline, "a@example.org")
    junk: list[Any] = [
        event("open", "a@example.org", sent["a@example.org"]),
        event("processed", "a@example.org", sent["a@example.org"]),
        {"event": "bounce", "email": "a@example.org"},  # no sg_event_id: cannot be deduplicated
        "not an object",
        {"sg_event_id": ["x"], "event": "bounce"},
    ]
    report = apply_events(runtime.engine, runtime.hasher, junk)
    assert (report.received, report.applied, report.ignored) == (5, 0, 5)
    assert count(runtime, WebhookEvent) == 0 and reload(runtime, sent["a@example.org"]).status == "sent"
    assert apply_events(runtime.engine, runtime.hasher, {"not": "a list"}).received == 0


def test_slim_keeps_only_what_is_applied() -> None:
    raw = [{"sg_event_id": "e1", "event": "bounce", "email": "a@x.org", "ip": "1.2.3.4", "useragent": "x", "tls": 1}]
    assert slim(raw) == [{"sg_event_id": "e1", "event": "bounce", "email": "a@x.org"}]


def test_the_task_applies_events_and_is_routed_with_deliveries(runtime: Runtime, inline: InlineEnqueue) -> None:
    from alerts.tasks.app import DELIVERIES_QUEUE, create_app
    from alerts.tasks.webhooks import process_sendgrid

    sent = send_alert(runtime, inline, "a@example.org")
    result = process_sendgrid.apply(args=[[event("spamreport", "a@example.org", sent["a@example.org"])]])
    assert result.get()["suppressed"] == 1
    app = create_app(runtime.settings)
    assert "alerts.tasks.webhooks" in app.conf.imports
    assert app.amqp.router.route({}, "alerts.webhooks.process_sendgrid")["queue"].name == DELIVERIES_QUEUE
