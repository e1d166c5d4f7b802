"""End to end on real parts: Redis broker, PostgreSQL, a real Celery worker (prefork), the file outbox."""

from __future__ import annotations

import time
import uuid
from email import policy
from email.parser import BytesParser
from pathlib import Path

import pytest
from sqlalchemy import select

from alerts.db import transaction
from alerts.models import RejectedEvent
from alerts.runtime import Runtime
from alerts.tasks.app import create_app
from tests.conftest import REDIS_URL, make_settings, study
from tests.factories import changed_event, follow, new_trial_event, open_recruitment
from tests.support.worker import celery_worker, wait_for


@pytest.fixture
def e2e_runtime(pg_schema_url: str, tmp_path: Path) -> Runtime:
    from tests.conftest import _truncate

    settings = make_settings(
        pg_schema_url,
        tmp_path,
        email_backend="file",
        broker_url=f"{REDIS_URL}/0",
        broker_prefix=f"alerts-test-{uuid.uuid4().hex[:8]}:",
    )
    runtime = Runtime(settings)
    _truncate(runtime.engine)
    return runtime


def outbox(runtime: Runtime) -> list[Path]:
    return sorted(runtime.settings.outbox_dir.glob("*.eml"))


def test_publish_to_outbox_through_a_real_worker(e2e_runtime: Runtime, tmp_path: Path) -> None:
    runtime = e2e_runtime
    follow(runtime, "trial.follower@example.org", trial="NCT04015791")
    follow(runtime, "condition.follower@example.org", condition="lumbar disc disease")
    producer = create_app(runtime.settings)
    record = study("NCT04015791")
    events = [
        ("alerts.events.new_trial_for_condition", new_trial_event(record, "Lumbar Disc Disease", event_id="n-1")),
        ("alerts.events.trial_changed", changed_event(open_recruitment(record), previous=record, event_id="c-1")),
    ]
    bad = changed_event(study("NCT04015791"))
    bad["trial"]["protocolSection"]["identificationModule"]["nctId"] = "NOT-AN-ID"
    with celery_worker(runtime.settings, tmp_path / "worker.log"):
        # Published by task name only, as a producer in any language would.
        for name, event in events:
            producer.send_task(name, args=[event])
        producer.send_task("alerts.events.trial_changed", args=[bad])
        wait_for(lambda: len(outbox(runtime)) >= 2, timeout_s=60)
        # Redelivery / producer retry: the same events again send nothing new.
        for name, event in events:
            producer.send_task(name, args=[event])
        producer.send_task("alerts.events.trial_changed", args=[events[1][1], "unexpected extra argument"])

        def rejected() -> int:
            with transaction(runtime.engine) as session:
                return len(session.scalars(select(RejectedEvent)).all())

        wait_for(lambda: rejected() >= 2, timeout_s=30)
        time.sleep(2)  # give any duplicate a chance to appear
    files = outbox(runtime)
    assert len(files) == 2, files
    messages = [BytesParser(policy=policy.default).parsebytes(p.read_bytes()) for p in files]
    by_to = {str(m["To"]): m for m in messages}
    assert set(by_to) == {"trial.follower@example.org", "condition.follower@example.org"}
    assert "Now recruiting" in str(by_to["trial.follower@example.org"]["Subject"])
    assert "New trial for Lumbar Disc Disease" in str(by_to["condition.follower@example.org"]["Subject"])
    for message in messages:
        assert message.get_content_type() == "multipart/alternative"
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    with transaction(runtime.engine) as session:
        reasons = [r.errors[0]["field"] for r in session.scalars(select(RejectedEvent).order_by(RejectedEvent.id))]
    assert reasons == ["trial.protocolSection.identificationModule.nctId", "(task)"]


@pytest.mark.parametrize("embedded", [False, True], ids=["redis-postgresql", "filesystem-sqlite"])
def test_web_sign_up_is_decided_by_a_real_worker(
    e2e_runtime: Runtime, tmp_path: Path, sqlite_url: str, embedded: bool
) -> None:
    """The form records and queues; a real worker decides and sends ONE email confirming both choices.
    Also on the embedded default: SQLite and Celery's filesystem broker."""
    from fastapi.testclient import TestClient

    from alerts.tasks.enqueue import CeleryEnqueue
    from alerts.web import create_app as create_web_app
    from tests.conftest import _truncate
    from tests.web.journey import link_in, subscriptions_of, teach

    runtime = e2e_runtime
    if embedded:
        runtime = Runtime(
            make_settings(sqlite_url, tmp_path, email_backend="file", broker_url="filesystem://", broker_dir=tmp_path)
        )
        _truncate(runtime.engine)
    teach(runtime)
    web = TestClient(create_web_app(runtime, enqueue=CeleryEnqueue(create_app(runtime.settings))))
    with celery_worker(runtime.settings, tmp_path / "worker.log"):
        form = {"email": "web.visitor@example.org", "trial": "NCT06740149", "condition": "Liver Failure"}
        assert web.post("/subscribe", data=form, follow_redirects=False).status_code == 303
        wait_for(lambda: len(outbox(runtime)) >= 1, timeout_s=60)
        time.sleep(1.5)  # give a second email the chance to appear
    [path] = outbox(runtime)
    message = BytesParser(policy=policy.default).parsebytes(path.read_bytes())
    assert str(message["Subject"]) == "Please confirm your 2 alerts"
    assert web.post(link_in(message, "confirm")).status_code == 200
    assert [s.status for s in subscriptions_of(runtime, "web.visitor@example.org")] == ["active", "active"]
