from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from alerts.runtime import Runtime
from alerts.web import create_app
from tests.conftest import InlineEnqueue


@pytest.fixture
def client(runtime: Runtime, inline: InlineEnqueue) -> TestClient:
    return TestClient(create_app(runtime, enqueue=inline), raise_server_exceptions=False)
