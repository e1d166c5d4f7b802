"""Property-based check of every API operation against the app's own OpenAPI document (schemathesis).

Valid and deliberately invalid requests: every answer has a documented status code, content type,
headers and body shape, never a 500, and what the schema forbids is refused. Bounded examples, so the
whole file takes well under a minute.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from alerts.runtime import Runtime
from alerts.web import create_app
from tests.conftest import InlineEnqueue
from tests.web.journey import teach

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
AUTH = {"Authorization": "Bearer ingest-token-for-tests"}
EXAMPLES = 15
OPERATIONS = [
    ("POST", "/api/subscriptions"),
    ("POST", "/api/events"),
    ("GET", "/api/conditions"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("POST", "/api/places"),
    ("GET", "/api/preferences"),
    ("PUT", "/api/preferences"),
    ("POST", "/webhooks/sendgrid"),
]


def test_every_api_operation_is_covered(runtime: Runtime, inline: InlineEnqueue) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(runtime, enqueue=inline))
    documented = {(op.ok().method.upper(), op.ok().path) for op in schema.get_all_operations()}
    assert documented == set(OPERATIONS)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[p for _, p in OPERATIONS])
def test_api_answers_match_its_document(
    runtime: Runtime, inline: InlineEnqueue, mode: GenerationMode, method: str, path: str
) -> None:
    runtime.settings = runtime.settings.model_copy(
        update={"signup_per_ip": "1000/minute", "confirm_per_address": "1000/minute"}
    )
    teach(runtime)
    app = create_app(runtime, enqueue=inline)
    operation = schemathesis.openapi.from_asgi("/openapi.json", app)[path][method]
    checks = [*CHECKS, negative_data_rejection] if mode is GenerationMode.NEGATIVE else CHECKS
    statuses: list[int] = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def run(case: Any) -> None:
        headers = AUTH if path == "/api/events" else None
        statuses.append(case.call_and_validate(checks=checks, headers=headers).status_code)

    if (path in {"/healthz", "/readyz"} or (path, method) == ("/api/preferences", "GET")) and (
        mode is GenerationMode.NEGATIVE
    ):
        pytest.skip("no parameters, nothing invalid to send")
    if path == "/webhooks/sendgrid" and mode is GenerationMode.NEGATIVE:
        # Unsigned, so refused (403) before its shape matters: tests/web/test_webhooks.py covers shapes.
        checks = CHECKS
    run()
    assert statuses
    if path == "/api/subscriptions" and mode is GenerationMode.POSITIVE:
        # The schema cannot say "a deliverable address" or "a condition the vocabulary knows": random
        # examples mostly get 422, so an accepted sign-up is checked against the document on its own.
        assert set(statuses) <= {202, 422}
        for body in ({"email": "someone@example.org", "trial": "NCT06740149"},):
            accepted = operation.Case(body=body, media_type="application/json").call_and_validate(checks=checks)
            assert accepted.status_code == 202
