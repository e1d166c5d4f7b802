"""SendGrid through the real pipeline (real databases, the real send task run eagerly), against the stand-in."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import func, insert, select

from alerts import pipeline
from alerts.db import transaction
from alerts.models import Delivery, Subscriber, Subscription
from alerts.pipeline import Rejected, ingest
from alerts.runtime import Runtime
from alerts.tasks.delivery import send_batch
from alerts.transports.sendgrid import SendGridTransport
from alerts.webhooks import apply_events
from tests.conftest import InlineEnqueue, study
from tests.factories import follow, new_trial_event
from tests.support.sendgrid_standin import SendGridStandIn
from tests.transports.conftest import API_KEY


@dataclass
class TaskEnqueue(InlineEnqueue):
    """Runs each batch through the real Celery task, eagerly: its retries run at once (countdowns computed)."""

    countdowns: list[float] = field(default_factory=list)

    def send_batch(self, event_id: int, after_id: int, upto_id: int) -> None:
        self.batches.append((event_id, after_id, upto_id))
        send_batch.apply(args=[event_id, after_id, upto_id])


@pytest.fixture
def sg_runtime(runtime: Runtime, standin: SendGridStandIn) -> Runtime:
    runtime.transport = SendGridTransport(API_KEY, standin.url, timeout_s=5.0, budget_s=60.0)
    return runtime


@pytest.fixture
def tasks(sg_runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> TaskEnqueue:
    enqueue = TaskEnqueue(sg_runtime)
    original = pipeline.backoff_seconds

    def recording(*args: Any, **kwargs: Any) -> float:
        delay = original(*args, **kwargs)
        enqueue.countdowns.append(delay)
        return delay

    monkeypatch.setattr(pipeline, "backoff_seconds", recording)
    return enqueue


def bulk_followers(runtime: Runtime, n: int, condition: str = "herniated disc") -> None:
    subscribers = [
        {"id": i, "email": f"s{i}@example.org", "email_hash": f"{i:064d}", "manage_token": f"m{i}"}
        for i in range(1, n + 1)
    ]
    subscriptions = [
        {
            "subscriber_id": i,
            "kind": "condition",
            "target": condition,
            "label": condition.title(),
            "status": "active",
            "unsubscribe_token": f"u{i}",
        }
        for i in range(1, n + 1)
    ]
    with transaction(runtime.engine) as session:
        session.execute(insert(Subscriber), subscribers)
        session.execute(insert(Subscription), subscriptions)


def deliveries(runtime: Runtime) -> list[Delivery]:
    with transaction(runtime.engine) as session:
        return list(session.scalars(select(Delivery).order_by(Delivery.id)))


def by_status(runtime: Runtime) -> dict[str, int]:
    with transaction(runtime.engine) as session:
        rows = session.execute(select(Delivery.status, func.count()).group_by(Delivery.status))
        return {str(status): int(n) for status, n in rows}


def test_fan_out_with_rate_limits_and_server_errors_reaches_everyone_exactly_once(
    sg_runtime: Runtime, tasks: TaskEnqueue, standin: SendGridStandIn
) -> None:
    bulk_followers(sg_runtime, 3000)
    standin.configure(rate_429=0.1, rate_500=0.1, retry_after_s=0, seed=7)
    standin.fail_next(1, 429, retry_after_s=3)  # at least one of each, whatever the draws
    standin.fail_next(1, 500)
    outcome = ingest(sg_runtime, new_trial_event(study("NCT00124774"), "Herniated Disc"), tasks, "test")
    assert not isinstance(outcome, Rejected) and outcome.recipients == 3000

    counts = standin.recipient_counts()
    assert len(counts) == 3000 and set(counts.values()) == {1}, "every recipient exactly one email"
    stats = standin.stats()
    assert stats["responses_by_status"].get("429", 0) >= 1 and stats["responses_by_status"].get("500", 0) >= 1
    assert by_status(sg_runtime) == {"sent": 3000}
    rows = deliveries(sg_runtime)
    assert {r.provider_message_id for r in rows} <= set(standin.message_ids)
    assert all(r.error is None and r.error_code is None and r.ambiguous_retries == 0 for r in rows)
    assert max(r.attempts for r in rows) >= 2
    # The task backed off, never sooner than the Retry-After the 429 asked for.
    assert max(tasks.countdowns) >= 3
    assert len(tasks.countdowns) == stats["responses_by_status"].get("429", 0) + sum(
        v for k, v in stats["responses_by_status"].items() if k.startswith("5")
    )


def test_a_refused_address_is_reported_and_not_retried(
    sg_runtime: Runtime, tasks: TaskEnqueue, standin: SendGridStandIn
) -> None:
    follow(sg_runtime, "nobody@example.org", condition="herniated disc")
    standin.add_bad_addresses("nobody@example.org")
    ingest(sg_runtime, new_trial_event(study("NCT00124774"), "Herniated Disc"), tasks, "test")
    (row,) = deliveries(sg_runtime)
    assert (row.status, row.error_code, row.attempts) == ("failed", 400, 1)
    assert row.error is not None and "Does not contain a valid address" in row.error
    assert standin.stats()["requests_total"] == 1 and tasks.countdowns == []


def test_one_bad_address_in_a_batch_of_1000_fails_alone(
    sg_runtime: Runtime, tasks: TaskEnqueue, standin: SendGridStandIn
) -> None:
    bulk_followers(sg_runtime, 1000)
    standin.add_bad_addresses("s417@example.org")
    ingest(sg_runtime, new_trial_event(study("NCT00124774"), "Herniated Disc"), tasks, "test")
    assert by_status(sg_runtime) == {"sent": 999, "failed": 1}
    failed = [r for r in deliveries(sg_runtime) if r.status == "failed"]
    assert [r.subscriber_id for r in failed] == [417] and failed[0].error_code == 400
    assert len(standin.recipient_counts()) == 999
    assert standin.stats()["requests_total"] == 2 and tasks.countdowns == []


@pytest.mark.parametrize("accepted", [False, True], ids=["dropped", "accepted-late"])
def test_a_timeout_is_retried_and_counted_as_ambiguous(
    sg_runtime: Runtime, tasks: TaskEnqueue, standin: SendGridStandIn, accepted: bool
) -> None:
    sg_runtime.transport = SendGridTransport(API_KEY, standin.url, timeout_s=0.5)
    follow(sg_runtime, "slow@example.org", condition="herniated disc")
    standin.configure(timeout_delay_s=1.2, timeout_accepts=accepted)
    standin.fail_next(1, "timeout")
    ingest(sg_runtime, new_trial_event(study("NCT00124774"), "Herniated Disc"), tasks, "test")
    (row,) = deliveries(sg_runtime)
    assert (row.status, row.attempts, row.ambiguous_retries) == ("sent", 2, 1)
    assert standin.wait_idle(5)
    # The ambiguity is real: when SendGrid had accepted the first try, the person got two emails; the
    # counter is how operators see it.
    assert standin.count_for("slow@example.org") == (2 if accepted else 1)


def test_a_hard_bounce_suppresses_the_next_send(
    sg_runtime: Runtime, tasks: TaskEnqueue, standin: SendGridStandIn
) -> None:
    follow(sg_runtime, "bouncer@example.org", condition="herniated disc")
    follow(sg_runtime, "fine@example.org", condition="herniated disc")
    ingest(sg_runtime, new_trial_event(study("NCT00124774"), "Herniated Disc"), tasks, "test")
    (sent,) = [p for p in standin.personalizations if p.to == ("bouncer@example.org",)]
    bounce = {
        "email": "bouncer@example.org",
        "event": "bounce",
        "type": "bounce",
        "reason": "550 5.1.1 The email account that you tried to reach does not exist",
        "status": "5.1.1",
        "sg_event_id": "evt-bounce-1",
        "sg_message_id": f"{sent.message_id}.filterdrecv-1.0",
        "timestamp": 1_800_000_000,
        **sent.custom_args,
    }
    report = apply_events(sg_runtime.engine, sg_runtime.hasher, [bounce])
    assert (report.applied, report.suppressed, report.failed_deliveries) == (1, 1, 1)

    ingest(sg_runtime, new_trial_event(study("NCT01367860"), "Herniated Disc"), tasks, "test")
    rows = {(r.event_id, r.subscriber_id): r for r in deliveries(sg_runtime)}
    statuses = sorted((event_id, r.status) for (event_id, _), r in rows.items())
    assert [s for _, s in statuses] == ["failed", "sent", "sent", "suppressed"]
    assert standin.count_for("bouncer@example.org") == 1
    assert standin.count_for("fine@example.org") == 2
