"""Counters every process agrees on: what the provider answered, counted per send batch in the database."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from alerts import counters
from alerts.db import transaction
from alerts.models import CounterIncrement, utcnow
from alerts.pipeline import Rejected, ingest
from alerts.runtime import Runtime
from alerts.status import collect
from alerts.tasks.app import create_app
from alerts.transports.sendgrid import SendGridTransport
from alerts.web import create_app as create_web
from tests.conftest import study
from tests.factories import new_trial_event
from tests.support.sendgrid_standin import SendGridStandIn
from tests.transports.test_sendgrid_pipeline import TaskEnqueue, bulk_followers

API_KEY = "SG.test-key-for-the-stand-in"


@pytest.fixture
def standin() -> Iterator[SendGridStandIn]:
    with SendGridStandIn(api_keys=[API_KEY]) as server:
        yield server


def scrape(runtime: Runtime) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics of a web app with its own runtime: another process's view of the same database."""
    other = Runtime(runtime.settings)
    app = create_web(other, enqueue=TaskEnqueue(other))
    app.state.celery = create_app(runtime.settings)
    text = TestClient(app).get("/metrics", headers={"Authorization": "Bearer ops-token-for-tests"}).text
    other.engine.dispose()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def test_provider_answers_are_counted_per_request_and_agree_everywhere(
    runtime: Runtime, standin: SendGridStandIn
) -> None:
    runtime.transport = SendGridTransport(API_KEY, standin.url, timeout_s=5.0, budget_s=60.0)
    bulk_followers(runtime, 3000)
    standin.configure(rate_429=0.15, rate_500=0.1, retry_after_s=0, seed=11)
    standin.fail_next(1, 429, retry_after_s=0)
    standin.fail_next(1, 500)
    outcome = ingest(runtime, new_trial_event(study("NCT00124774"), "Herniated Disc"), TaskEnqueue(runtime), "t")
    assert not isinstance(outcome, Rejected) and outcome.recipients == 3000

    answered = standin.stats()["responses_by_status"]
    assert answered.get("429", 0) >= 1 and answered.get("500", 0) >= 1
    samples = scrape(runtime)
    for code, n in answered.items():
        assert samples[("alerts_provider_answers_total", (("code", code),))] == n
    assert samples[("alerts_provider_errors_total", (("code", "429"),))] == answered["429"]
    assert ("alerts_provider_errors_total", (("code", "202"),)) not in samples
    assert samples[("alerts_emails_sent_total", ())] == 3000
    assert samples[("alerts_provider_timeouts_total", ())] == 0
    # The errors were retried away: nothing has failed now, yet the counters keep every answer.
    assert ("alerts_failed_deliveries", (("code", "429"),)) not in samples
    assert samples[("alerts_last_send_timestamp_seconds", ())] == pytest.approx(utcnow().timestamp(), abs=120)

    status = collect(runtime.engine, create_app(runtime.settings), inspect_workers=False, settings=runtime.settings)
    assert status.mail is not None
    assert status.mail.throttled_last_hour == answered["429"]
    assert status.mail.sent_last_5_min == 3000 and status.mail.last_sent_ago_s is not None
    assert any("provider throttling" in p for p in status.problems)


def test_a_stalled_request_counts_a_timeout_and_possible_duplicates(runtime: Runtime, standin: SendGridStandIn) -> None:
    runtime.transport = SendGridTransport(API_KEY, standin.url, timeout_s=0.5, budget_s=60.0)
    bulk_followers(runtime, 1000)
    standin.configure(timeout_delay_s=1.5, timeout_accepts=True)
    standin.fail_next(1, "timeout")  # SendGrid accepts the request but answers too late: sent twice
    ingest(runtime, new_trial_event(study("NCT00124774"), "Herniated Disc"), TaskEnqueue(runtime), "t")

    samples = scrape(runtime)
    assert samples[("alerts_provider_timeouts_total", ())] == 1
    assert samples[("alerts_ambiguous_resends_total", (("reason", "timeout"),))] == 1000
    assert samples[("alerts_ambiguous_retries_total", ())] == 1000
    status = collect(runtime.engine, create_app(runtime.settings), inspect_workers=False, settings=runtime.settings)
    assert status.mail is not None and status.mail.possible_duplicates_last_day == 1000
    assert any(p.startswith("possible duplicates: 1000") for p in status.problems)
    assert status.as_dict()["all_clear"] is False


def test_counting_is_one_insert_per_batch(runtime: Runtime, standin: SendGridStandIn) -> None:
    runtime.transport = SendGridTransport(API_KEY, standin.url, timeout_s=5.0)
    bulk_followers(runtime, 2500)
    ingest(runtime, new_trial_event(study("NCT00124774"), "Herniated Disc"), TaskEnqueue(runtime), "t")
    with transaction(runtime.engine) as session:
        rows = session.scalar(select(func.count()).select_from(CounterIncrement))
        assert counters.totals(session)[(counters.SENT, "")] == 2500
    # Three batches, each adding "sent" and one provider answer: rows per batch, not per recipient.
    assert rows == 6


def test_fold_keeps_totals_and_recent_detail(runtime: Runtime) -> None:
    now = utcnow()
    with transaction(runtime.engine) as session:
        for days in (10, 5, 3):
            counters.add(
                session, {(counters.SENT, ""): 100, (counters.PROVIDER_ANSWERS, "202"): 1}, now - timedelta(days=days)
            )
        counters.add(session, {(counters.SENT, ""): 7}, now - timedelta(minutes=1))
    with transaction(runtime.engine) as session:
        assert counters.fold(session, now) == 4
    with transaction(runtime.engine) as session:
        assert counters.fold(session, now) == 0  # already folded
        assert counters.totals(session) == {(counters.SENT, ""): 307, (counters.PROVIDER_ANSWERS, "202"): 3}
        assert counters.since(session, counters.SENT, now - timedelta(hours=1)) == {"": 7}
        assert session.scalar(select(func.count()).select_from(CounterIncrement)) == 3
