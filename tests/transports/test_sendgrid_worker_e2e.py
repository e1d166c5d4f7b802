"""End to end on real parts: Redis broker, PostgreSQL, a real Celery worker (prefork) sending through the
official SendGrid client to the stand-in, which answers 429s and 500s: the worker's retries get every
recipient exactly one email."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select

from alerts.db import transaction
from alerts.models import Delivery, Subscriber, Subscription
from alerts.runtime import Runtime
from alerts.tasks.app import create_app
from tests.conftest import REDIS_URL, _truncate, make_settings, study
from tests.factories import new_trial_event
from tests.support.sendgrid_standin import SendGridStandIn
from tests.support.worker import celery_worker, wait_for
from tests.transports.conftest import API_KEY

FOLLOWERS = 2000


def statuses(runtime: Runtime) -> dict[str, int]:
    with transaction(runtime.engine) as session:
        rows = session.execute(select(Delivery.status, func.count()).group_by(Delivery.status))
        return {str(s): int(n) for s, n in rows}


def test_worker_retries_rate_limits_and_server_errors_until_everyone_has_one_email(
    pg_schema_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SendGridStandIn(api_keys=[API_KEY], record_bodies=False) as standin:
        settings = make_settings(
            pg_schema_url,
            tmp_path,
            email_backend="sendgrid",
            sendgrid_api_key=API_KEY,
            sendgrid_host=standin.url,
            sendgrid_timeout_s=5.0,
            broker_url=f"{REDIS_URL}/0",
            broker_prefix=f"alerts-test-{uuid.uuid4().hex[:8]}:",
        )
        runtime = Runtime(settings)
        _truncate(runtime.engine)
        with transaction(runtime.engine) as session:
            session.execute(
                insert(Subscriber),
                [
                    {"id": i, "email": f"w{i}@example.org", "email_hash": f"{i:064d}", "manage_token": f"m{i}"}
                    for i in range(1, FOLLOWERS + 1)
                ],
            )
            session.execute(
                insert(Subscription),
                [
                    {
                        "subscriber_id": i,
                        "kind": "condition",
                        "target": "herniated disc",
                        "label": "Herniated Disc",
                        "status": "active",
                        "unsubscribe_token": f"u{i}",
                    }
                    for i in range(1, FOLLOWERS + 1)
                ],
            )
        # Small batches (more requests, more faults) and short backoffs keep the test quick.
        monkeypatch.setenv("ALERTS_BATCH_SIZE", "250")
        monkeypatch.setenv("ALERTS_SEND_RETRY_BASE_S", "0.2")
        standin.configure(rate_429=0.15, rate_500=0.15, retry_after_s=0, seed=11)
        standin.fail_next(1, 429, retry_after_s=1)
        standin.fail_next(1, 500)
        producer = create_app(settings)
        with celery_worker(settings, tmp_path / "worker.log", concurrency=4):
            producer.send_task(
                "alerts.events.new_trial_for_condition", args=[new_trial_event(study("NCT00124774"), "Herniated Disc")]
            )
            wait_for(lambda: statuses(runtime).get("sent", 0) == FOLLOWERS, timeout_s=120)
            time.sleep(1)  # give any duplicate a chance to arrive
        counts = standin.recipient_counts()
        stats = standin.stats()
    assert len(counts) == FOLLOWERS and set(counts.values()) == {1}, "every recipient exactly one email"
    assert stats["responses_by_status"].get("429", 0) >= 1 and stats["responses_by_status"].get("500", 0) >= 1
    assert statuses(runtime) == {"sent": FOLLOWERS}
    with transaction(runtime.engine) as session:
        assert session.scalar(select(func.max(Delivery.attempts))) >= 2
        assert session.scalar(select(func.sum(Delivery.ambiguous_retries))) == 0
    log = (tmp_path / "worker.log").read_text()
    assert "Retry in" in log and "sendgrid.accepted" in log
    assert API_KEY not in log and "w1@example.org" not in log
    runtime.engine.dispose()
