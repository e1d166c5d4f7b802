"""``GET /readyz`` touches the database and the broker for real and says which one does not answer."""

from __future__ import annotations

import uuid
from pathlib import Path

from fastapi.testclient import TestClient

from alerts.runtime import Runtime
from alerts.tasks.app import create_app
from alerts.web import create_app as create_web
from tests.conftest import REDIS_URL, InlineEnqueue, make_settings


def _client(runtime: Runtime, broker_url: str) -> TestClient:
    runtime.settings.broker_url = broker_url
    runtime.settings.broker_prefix = f"ready-test-{uuid.uuid4().hex[:6]}:"
    app = create_web(runtime, enqueue=InlineEnqueue(runtime))
    app.state.celery = create_app(runtime.settings)
    return TestClient(app)


def test_ready_when_database_and_broker_answer(runtime: Runtime) -> None:
    response = _client(runtime, f"{REDIS_URL}/0").get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "database": "ok", "broker": "ok"}
    assert response.headers["cache-control"] == "no-store"


def test_not_ready_without_the_broker(runtime: Runtime) -> None:
    response = _client(runtime, "redis://127.0.0.1:1/0").get("/readyz")  # nothing listens there
    assert response.status_code == 503
    assert response.json() == {"status": "not ready", "database": "ok", "broker": "unavailable"}
    assert _client(runtime, f"{REDIS_URL}/0").get("/healthz").status_code == 200  # alive all the same


def test_not_ready_without_the_database(runtime: Runtime, tmp_path: Path) -> None:
    unreachable = Runtime(make_settings("postgresql://alerts@127.0.0.1:1/alerts?connect_timeout=2", tmp_path))
    response = _client(unreachable, f"{REDIS_URL}/0").get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["database"] == "unavailable" and body["broker"] == "ok"
    assert "127.0.0.1" not in response.text  # nothing about the setup is told to an unauthenticated caller
