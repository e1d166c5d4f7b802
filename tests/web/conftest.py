from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from alerts.runtime import Runtime
from alerts.web import create_app
from tests.conftest import InlineEnqueue


@pytest.fixture
def client(runtime: Runtime, inline: InlineEnqueue) -> Iterator[TestClient]:
    # Started (``with``) as uvicorn starts it: on PostgreSQL the link pages then use their async store.
    with TestClient(create_app(runtime, enqueue=inline), raise_server_exceptions=False) as started:
        yield started
