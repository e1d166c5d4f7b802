"""Property-based check of the sign-up API against its own OpenAPI document (schemathesis + hypothesis)."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from alerts.runtime import Runtime
from alerts.web import create_app
from tests.conftest import InlineEnqueue

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_sign_up_api_matches_its_document(runtime: Runtime, inline: InlineEnqueue, mode: GenerationMode) -> None:
    """Valid-looking and deliberately invalid requests: documented status codes and bodies, never a 500."""
    runtime.settings = runtime.settings.model_copy(
        update={"signup_per_ip": "1000/minute", "confirm_per_address": "1000/minute"}
    )
    app = create_app(runtime, enqueue=inline)
    operation = schemathesis.openapi.from_asgi("/openapi.json", app)["/api/subscriptions"]["POST"]

    statuses: list[int] = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def run(case: Any) -> None:
        statuses.append(case.call_and_validate(checks=CHECKS).status_code)

    run()
    assert len(statuses) >= 10
    if mode is GenerationMode.POSITIVE:
        assert set(statuses) <= {202, 422}  # the schema cannot say "a valid address" or "exactly one of"
        assert 202 in statuses
    else:
        assert set(statuses) <= {400, 422}
