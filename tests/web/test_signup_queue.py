"""The web's sign-up task message (alerts.web.signupqueue): the message Celery's send_task pushes, pushed where it
would push it, taken and decided by a real worker; apps without a Redis broker keep send_task."""

from __future__ import annotations

import base64
import json
import time
import uuid
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import select

from alerts.db import transaction
from alerts.models import SignupRequest
from alerts.runtime import Runtime
from alerts.tasks.app import create_app as create_celery_app
from alerts.tasks.enqueue import CeleryEnqueue
from alerts.web import create_app
from alerts.web.signupqueue import TASK, SignupQueue, usable
from tests.conftest import REDIS_URL, InlineEnqueue, _truncate, make_settings
from tests.support.worker import celery_worker, wait_for
from tests.web.journey import link_in, subscriptions_of

TRIAL = "NCT06740149"


def _comparable(raw: bytes) -> dict[str, Any]:
    """A Redis list entry with its per-message ids masked and its body decoded."""
    message = json.loads(raw)
    message["body"] = json.loads(base64.b64decode(message["body"]))
    for name in ("id", "root_id"):
        message["headers"][name] = "<id>"
    for name in ("correlation_id", "delivery_tag"):
        message["properties"][name] = "<id>"
    return dict(message)


@pytest.fixture
def broker_runtime(pg_schema_url: str, tmp_path: Path) -> Any:
    prefix = f"alerts-test-{uuid.uuid4().hex[:8]}:"
    runtime = Runtime(
        make_settings(
            pg_schema_url,
            tmp_path,
            email_backend="file",
            broker_url=f"{REDIS_URL}/0",
            broker_prefix=prefix,
            signup_per_ip="1000/minute",
        )
    )
    _truncate(runtime.engine)
    client = redis.Redis.from_url(f"{REDIS_URL}/0")
    yield runtime
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)
    client.close()
    runtime.engine.dispose()


def test_the_message_is_the_one_send_task_pushes_to_the_same_list(broker_runtime: Runtime) -> None:
    celery = create_celery_app(broker_runtime.settings)
    assert usable(celery)
    queue = SignupQueue(celery)
    assert queue.key == f"{broker_runtime.settings.broker_prefix}deliveries"
    client = redis.Redis.from_url(f"{REDIS_URL}/0")
    celery.send_task(TASK, args=[42])
    [by_celery] = client.lrange(queue.key, 0, -1)
    client.delete(queue.key)
    ours = queue.message(42)
    assert _comparable(ours) == _comparable(by_celery)
    # Fresh ids per message, as send_task makes them.
    again = json.loads(queue.message(42))
    assert again["headers"]["id"] != json.loads(ours)["headers"]["id"]
    assert again["properties"]["delivery_tag"] != json.loads(ours)["properties"]["delivery_tag"]
    assert again["headers"]["root_id"] == again["headers"]["id"] == again["properties"]["correlation_id"]
    client.close()


def test_other_brokers_keep_send_task(tmp_path: Path, sqlite_url: str) -> None:
    settings = make_settings(sqlite_url, tmp_path, broker_url="filesystem://", broker_dir=tmp_path)
    assert not usable(create_celery_app(settings))


def test_a_started_app_queues_each_sign_up_with_one_push(broker_runtime: Runtime) -> None:
    """Started as uvicorn starts it, on PostgreSQL and a Redis broker: one message per recorded sign-up, naming
    its row; deciding it sends the confirmation."""
    celery = create_celery_app(broker_runtime.settings)
    app = create_app(broker_runtime, enqueue=CeleryEnqueue(celery))
    client = redis.Redis.from_url(f"{REDIS_URL}/0")
    with TestClient(app, raise_server_exceptions=False) as started:
        queue = app.state.signup_queue
        assert isinstance(queue, SignupQueue)
        for n in range(3):
            answer = started.post("/api/subscriptions", json={"email": f"q{n}@example.org", "trial": TRIAL})
            assert answer.status_code == 202
        messages = [json.loads(m) for m in reversed(client.lrange(queue.key, 0, -1))]
    assert app.state.signup_queue is None  # closed with the app
    with transaction(broker_runtime.engine) as session:
        recorded = list(session.scalars(select(SignupRequest.id).order_by(SignupRequest.id)))
    assert [m["headers"]["task"] for m in messages] == [TASK] * 3
    assert [json.loads(base64.b64decode(m["body"]))[0] for m in messages] == [[i] for i in recorded]
    client.close()


def test_an_app_with_another_enqueue_keeps_it(broker_runtime: Runtime) -> None:
    inline = InlineEnqueue(broker_runtime)
    app = create_app(broker_runtime, enqueue=inline)
    with TestClient(app, raise_server_exceptions=False) as started:
        assert app.state.signup_queue is None
        assert started.post("/api/subscriptions", json={"email": "i@example.org", "trial": TRIAL}).status_code == 202
    assert len(inline.signups) == 1


def test_a_real_worker_decides_what_the_web_pushed(broker_runtime: Runtime, tmp_path: Path) -> None:
    runtime = broker_runtime
    app = create_app(runtime, enqueue=CeleryEnqueue(create_celery_app(runtime.settings)))
    with TestClient(app, raise_server_exceptions=False) as started:
        assert app.state.signup_queue is not None
        answer = started.post("/api/subscriptions", json={"email": "pushed@example.org", "trial": TRIAL})
        assert answer.status_code == 202
        with celery_worker(runtime.settings, tmp_path / "worker.log"):
            wait_for(lambda: len(list(runtime.settings.outbox_dir.glob("*.eml"))) >= 1, timeout_s=60)
            time.sleep(1)  # a second email would show up here
        [path] = runtime.settings.outbox_dir.glob("*.eml")
        message = BytesParser(policy=policy.default).parsebytes(path.read_bytes())
        assert str(message["To"]) == "pushed@example.org"
        assert started.post(link_in(message, "confirm")).status_code == 200
    assert [s.status for s in subscriptions_of(runtime, "pushed@example.org")] == ["active"]
    with transaction(runtime.engine) as session:
        assert session.scalars(select(SignupRequest)).all() == []
