"""The operator page and Prometheus metrics on a real database and a real (Redis) broker."""

from __future__ import annotations

import base64
import uuid
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from alerts.db import transaction
from alerts.models import Delivery, utcnow
from alerts.pipeline import ingest
from alerts.runtime import Runtime
from alerts.tasks.app import create_app
from alerts.web import create_app as create_web
from tests.conftest import REDIS_URL, InlineEnqueue, study
from tests.factories import follow, new_trial_event


@pytest.fixture
def ops_client(runtime: Runtime, inline: InlineEnqueue) -> TestClient:
    runtime.settings.broker_url = f"{REDIS_URL}/0"
    runtime.settings.broker_prefix = f"ops-test-{uuid.uuid4().hex[:6]}:"
    app = create_web(runtime, enqueue=inline)
    app.state.celery = create_app(runtime.settings)
    return TestClient(app, raise_server_exceptions=False)


def basic(password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"ops:{password}".encode()).decode()}


def test_ops_page_requires_the_token(ops_client: TestClient) -> None:
    response = ops_client.get("/ops")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Basic")
    assert ops_client.get("/ops", headers=basic("wrong")).status_code == 401
    assert ops_client.get("/ops", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_ops_page_shows_figures_problems_and_chart(
    ops_client: TestClient, runtime: Runtime, inline: InlineEnqueue
) -> None:
    for n in range(3):
        follow(runtime, f"p{n}@example.org", condition="Herniated Disc")
    ingest(runtime, new_trial_event(study("NCT00124774"), "Herniated Disc"), inline, "t")
    ingest(runtime, {"type": "trial.changed"}, inline, "t")
    with transaction(runtime.engine) as session:
        session.execute(
            update(Delivery)
            .where(Delivery.id == 1)
            .values(status="failed", error="Does not contain a valid address.", error_code=400, updated_at=utcnow())
        )
        session.execute(
            update(Delivery)
            .where(Delivery.id == 2)
            .values(status="sending", lease_until=utcnow() - timedelta(minutes=1))
        )
    response = ops_client.get("/ops", headers=basic("ops-token-for-tests"))
    assert response.status_code == 200
    page = response.text
    assert "Needs attention" in page
    assert "1 failed deliveries" in page and "stuck in" in page and "rejected in the last hour" in page
    assert "<svg" in page and "Deliveries sent and failed per minute" in page
    assert "Does not contain a valid address." in page
    assert "@example.org" not in page
    assert ops_client.get("/ops", headers={"Authorization": "Bearer ops-token-for-tests"}).status_code == 200


def test_metrics_in_prometheus_format(ops_client: TestClient, runtime: Runtime, inline: InlineEnqueue) -> None:
    follow(runtime, "a@example.org", condition="Herniated Disc")
    ingest(runtime, new_trial_event(study("NCT00124774"), "Herniated Disc"), inline, "t")
    ingest(runtime, {"type": "trial.changed"}, inline, "t")
    assert ops_client.get("/metrics").status_code == 401  # ALERTS_OPS_TOKEN is set: it is required
    response = ops_client.get("/metrics", headers={"Authorization": "Bearer ops-token-for-tests"})
    assert response.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[("alerts_events_total", (("outcome", "fanned_out"), ("type", "trial.new_for_condition")))] == 1
    assert samples[("alerts_events_total", (("outcome", "rejected"), ("type", "trial.changed")))] == 1
    assert samples[("alerts_deliveries", (("status", "sent"),))] == 1
    assert samples[("alerts_send_latency_seconds_count", ())] == 1
    assert samples[("alerts_queue_depth", (("queue", "events"),))] == 0
    assert samples[("alerts_broker_up", ())] == 1
    assert "alerts_oldest_undelivered_seconds" in families


def test_ops_page_says_unknown_when_the_broker_cannot_be_read(runtime: Runtime, inline: InlineEnqueue) -> None:
    runtime.settings.broker_url = "redis://127.0.0.1:1/0"  # nothing listens there
    app = create_web(runtime, enqueue=inline)
    app.state.celery = create_app(runtime.settings)
    page = TestClient(app).get("/ops", headers=basic("ops-token-for-tests")).text
    assert "Broker unreachable" in page and "Needs attention" in page
    for queue in ("events", "deliveries", "maintenance"):
        assert f'<th scope="row">{queue}</th><td class="n">unknown</td>' in page
