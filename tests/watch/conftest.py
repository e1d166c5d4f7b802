"""A registry stand-in serving the real fixture records, and a runtime pointed at it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from alerts.ctgov.client import RegistryClient
from alerts.ctgov.standin import RegistryStandIn
from alerts.runtime import Runtime
from alerts.watch.passes import PassReport, run_pass
from tests.conftest import InlineEnqueue, all_studies

# Held back from the registry's first day: it is registered on the second one (a new trial).
NEW_TRIAL = "NCT06352177"  # NASH / Liver Diseases; MeSH: Fatty Liver, Non-alcoholic Fatty Liver Disease


@pytest.fixture
def registry() -> Iterator[RegistryStandIn]:
    records = [r for r in all_studies() if r["protocolSection"]["identificationModule"]["nctId"] != NEW_TRIAL]
    with RegistryStandIn(records, timeout_fault_s=1.0) as standin:
        yield standin


def fast_client(registry: RegistryStandIn, **options: Any) -> Callable[[Callable[[], None] | None], RegistryClient]:
    """Real HTTP to the stand-in, without the production pace (1 request/s) and backoff (seconds)."""
    values: dict[str, Any] = {"rate_per_s": 1000.0, "timeout_s": 0.5, "retries": 3, "retry_base_s": 0.01}

    def make(alive: Callable[[], None] | None) -> RegistryClient:
        return RegistryClient(registry.url, alive=alive, **(values | options))

    return make


@pytest.fixture
def watch(runtime: Runtime, inline: InlineEnqueue, registry: RegistryStandIn) -> Callable[..., PassReport]:
    def run(**options: Any) -> PassReport:
        client = options.pop("client", None) or fast_client(registry)
        return run_pass(runtime, inline, client_factory=client, **options)

    return run
