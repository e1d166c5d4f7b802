"""The registry client against the local stand-in over real HTTP: pacing, retries, Retry-After, broken pages."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from email.utils import format_datetime

import pytest

from alerts.ctgov.client import RegistryClient, RegistryError, TokenRefused, loads, retry_after_s
from alerts.ctgov.standin import RegistryStandIn
from tests.conftest import all_studies


@pytest.fixture
def registry() -> Iterator[RegistryStandIn]:
    with RegistryStandIn(all_studies(), timeout_fault_s=1.0) as standin:
        yield standin


class Waits:
    """Records the waits the client asks for instead of sleeping them (the client's clock, not the network)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.seconds.append(seconds)


def client(registry: RegistryStandIn, waits: Waits | None = None, **options: object) -> RegistryClient:
    values: dict[str, object] = {"rate_per_s": 1000.0, "timeout_s": 0.5, "retries": 3, "retry_base_s": 0.01}
    return RegistryClient(registry.url, sleep=waits or time.sleep, **(values | options))  # type: ignore[arg-type]


def test_retry_after_as_seconds_or_date() -> None:
    now = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    assert retry_after_s("120") == 120.0
    assert retry_after_s(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30.0
    assert retry_after_s("soon") is None and retry_after_s(None) is None


def test_walks_pages_and_names_us(registry: RegistryStandIn) -> None:
    with client(registry, contact="ops@example.org") as c:
        version = c.version()
        first = c.studies_page(since=date(2020, 1, 1), page_size=10, count_total=True)
        second = c.studies_page(since=date(2020, 1, 1), page_size=10, page_token=first.next_token)
    assert version.data_timestamp == registry.data_timestamp
    assert first.total is not None and first.total > 10 and second.total is None
    assert {s["protocolSection"]["identificationModule"]["nctId"] for s in first.studies}.isdisjoint(
        s["protocolSection"]["identificationModule"]["nctId"] for s in second.studies
    )
    assert any("+ops@example.org" in agent and agent.startswith("trial-alerts/") for agent in registry.user_agents)


def test_rate_limit_spaces_requests(registry: RegistryStandIn) -> None:
    started = time.monotonic()
    with client(registry, rate_per_s=10.0) as c:
        for _ in range(4):
            c.version()
    assert time.monotonic() - started >= 0.3


def test_transient_faults_are_retried_and_retry_after_honoured(registry: RegistryStandIn) -> None:
    for fault in ("429", "500", "503", "reset", "timeout", "truncated", "shape"):
        registry.inject(fault, retry_after="5")
    waits = Waits()
    with client(registry, waits, retries=7) as c:
        page = c.studies_page(since=None, page_size=5)
    assert len(page.studies) == 5
    assert c.retried == 7 and c.requests == 8
    assert waits.seconds[0] >= 5.0  # after the 429: never sooner than the registry asked


def test_a_page_that_stays_broken_says_why(registry: RegistryStandIn) -> None:
    registry.inject("truncated", times=4)
    with client(registry, Waits()) as c, pytest.raises(RegistryError) as caught:
        c.studies_page(since=None)
    assert "truncated or invalid JSON" in caught.value.reason and "gave up after 4 attempts" in caught.value.reason
    registry.inject("shape", times=4)
    with client(registry, Waits()) as c, pytest.raises(RegistryError) as caught:
        c.studies_page(since=None)
    assert "wrong shape" in caught.value.reason


def test_a_long_retry_after_ends_the_pass_instead_of_blocking(registry: RegistryStandIn) -> None:
    registry.inject("429", retry_after="3600")
    with client(registry, Waits()) as c, pytest.raises(RegistryError) as caught:
        c.studies_page(since=None)
    assert "Retry-After 3600 s" in caught.value.reason


def test_closing_the_client_ends_a_request_waiting_to_retry(registry: RegistryStandIn) -> None:
    # The watcher asks for the next page in a thread; a pass that ends closes the client, and that request
    # must not wait out its backoff (here Retry-After 300 s) before the process can exit.
    registry.inject("503", retry_after="300")
    c = RegistryClient(registry.url, rate_per_s=1000.0, retries=3)
    failed: list[BaseException] = []

    def ask() -> None:
        try:
            c.studies_page(since=None)
        except BaseException as exc:
            failed.append(exc)

    asking = threading.Thread(target=ask)
    started = time.monotonic()
    asking.start()
    time.sleep(0.3)
    c.close()
    asking.join(timeout=5)
    assert not asking.is_alive() and time.monotonic() - started < 5
    assert isinstance(failed[0], RegistryError) and "closed" in failed[0].reason
    assert c.requests == 1


def test_client_errors_are_not_retried(registry: RegistryStandIn) -> None:
    with client(registry, Waits()) as c:
        with pytest.raises(RegistryError) as caught:
            c.studies_page(since=None, fields=["NoSuchField"])
        assert "HTTP 400" in caught.value.reason and c.requests == 1
        with pytest.raises(TokenRefused):
            c.studies_page(since=None, page_token="bm90LWEtdG9rZW4=")


@pytest.mark.parametrize(
    "text",
    [
        b'{"count": 18446744073709551616, "n": -9223372036854775809, "ok": 9223372036854775807}',
        b'{"id": "1234567890123456789012", "x": 1.5, "y": [1e400]}',
        b'{"short": 123456789012345678, "f": 2.5e-07}',
        b'{"s": "\\ud800 lone"}',
        b'{"nested": {"a": [0, 12345678901234567890123]}}',
    ],
)
def test_loads_reads_what_json_reads(text: bytes) -> None:
    # orjson reads integers beyond 64 bits as floats and refuses lone surrogates: json decides those.
    assert repr(loads(text)) == repr(json.loads(text))
