"""Production headers, operator endpoints, and request-body limits enforced before anything parses."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from alerts.runtime import Runtime
from alerts.web import create_app
from tests.conftest import InlineEnqueue, make_settings, study
from tests.factories import new_trial_event

LONG_TOKEN = "ops-token-for-tests-" + "x" * 24
INGEST = "ingest-token-for-tests-" + "y" * 24


@pytest.fixture
def prod(db_url: str, tmp_path: Path, runtime: Runtime, inline: InlineEnqueue) -> TestClient:
    settings = make_settings(db_url, tmp_path, env="prod", ops_token=LONG_TOKEN, ingest_token=INGEST)
    prod_runtime = Runtime(settings)
    prod_runtime.transport = runtime.transport
    return TestClient(create_app(prod_runtime, enqueue=inline), raise_server_exceptions=False)


def test_production_sends_hsts_everywhere_and_has_no_cdn_docs(prod: TestClient, client: TestClient) -> None:
    for path in ("/healthz", "/subscribe", "/openapi.json", "/nowhere"):
        assert prod.get(path).headers["strict-transport-security"] == "max-age=31536000; includeSubDomains"
    assert prod.get("/docs").status_code == 404
    assert prod.get("/redoc").status_code == 404
    assert prod.get("/openapi.json").status_code == 200
    # Outside production: the interactive docs, and no HSTS (plain http on a laptop).
    assert client.get("/docs").status_code == 200
    assert "strict-transport-security" not in client.get("/healthz").headers


def test_ops_page_is_never_framed_and_runs_no_scripts(prod: TestClient) -> None:
    refused = prod.get("/ops")
    assert refused.status_code == 401
    page = prod.get("/ops", headers={"Authorization": f"Bearer {LONG_TOKEN}"})
    assert page.status_code == 200
    for response in (refused, page):
        csp = response.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp and "script-src" not in csp
        assert response.headers["x-frame-options"] == "DENY"


def test_metrics_need_the_ops_token(prod: TestClient, db_url: str, tmp_path: Path, inline: InlineEnqueue) -> None:
    assert prod.get("/metrics").status_code == 401
    assert prod.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert prod.get("/metrics", headers={"Authorization": f"Bearer {LONG_TOKEN}"}).status_code == 200
    assert prod.get("/metrics", auth=("prometheus", LONG_TOKEN)).status_code == 200
    # Production without a token: closed. Development without one: open (a local Prometheus).
    closed = Runtime(make_settings(db_url, tmp_path, env="prod", ops_token=None, ingest_token=INGEST))
    assert TestClient(create_app(closed, enqueue=inline)).get("/metrics").status_code == 401
    open_ = Runtime(make_settings(db_url, tmp_path, env="dev", ops_token=None))
    assert TestClient(create_app(open_, enqueue=inline)).get("/metrics").status_code == 200


@pytest.fixture
def small(runtime: Runtime, inline: InlineEnqueue) -> FastAPI:
    runtime.settings = runtime.settings.model_copy(update={"max_body_bytes": 2048, "max_ingest_body_bytes": 400_000})
    return create_app(runtime, enqueue=inline)


def test_body_limits_per_route(small: FastAPI) -> None:
    client = TestClient(small)
    auth = {"Authorization": "Bearer ingest-token-for-tests"}
    event = new_trial_event(study("NCT00124774"), "Herniated Disc")
    assert 2048 < len(json.dumps(event)) < 400_000
    assert client.post("/api/events", json=event, headers=auth).status_code == 202
    padded = {"email": "a@example.org", "trial": "NCT06740149", "pad": "x" * 3000}
    too_big = client.post("/api/subscriptions", json=padded)
    assert too_big.status_code == 413
    assert too_big.json() == {"detail": "the request body is larger than 2048 bytes"}
    assert client.post("/subscribe", data={"email": "a@example.org", "x": "y" * 3000}).status_code == 413
    assert client.post("/api/events", content=b"x" * 400_001, headers=auth).status_code == 413
    assert client.post("/api/subscriptions", content=b"{}", headers={"Content-Length": "nope"}).status_code == 400


def call(app: FastAPI, path: str, headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> tuple[int, int]:
    """One request straight into the ASGI app; returns (status, how many body chunks the app read)."""
    read = 0
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal read
        if read < len(chunks):
            read += 1
            return {"type": "http.request", "body": chunks[read - 1], "more_body": read < len(chunks)}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"testserver"), *headers],
        "client": ("203.0.113.9", 5000),
        "server": ("testserver", 80),
    }
    asyncio.run(app(scope, receive, send))
    return status, read


def test_an_oversized_body_is_refused_before_it_is_read(small: FastAPI) -> None:
    chunks = [b"x" * 100_000] * 500  # 50 MB
    declared = [(b"content-length", b"50000000"), (b"authorization", b"Bearer ingest-token-for-tests")]
    assert call(small, "/api/events", declared, chunks) == (413, 0)
    # No length given (chunked): read only until it passes the limit.
    status, read = call(small, "/api/events", [(b"authorization", b"Bearer ingest-token-for-tests")], chunks)
    assert (status, read) == (413, 5)
    # Without the token, not a byte is read whatever its size.
    assert call(small, "/api/events", [(b"content-length", b"300000")], chunks[:3]) == (401, 0)
    assert call(small, "/api/subscriptions", [(b"content-type", b"application/json")], [b"{" * 1000] * 5)[0] == 413
