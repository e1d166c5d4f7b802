"""The chaos scenarios (chaos/), small: 2,000 recipients, fewer faults, real Redis, PostgreSQL, Celery workers
and the SendGrid stand-in as a process. Each asserts that nobody is missed and that every extra email is one
the scenario documents as ambiguous (provider timeout, or a kill while the request was out).

The full scenarios run with ``make chaos``; see chaos/README.md.
"""

from __future__ import annotations

import os
import random
import shutil

import pytest

from chaos import duplicate_publish, kill_worker, postgres_restart, provider_faults, redis_restart
from chaos.harness import Result

N = 2000
SEED = int(os.environ.get("CHAOS_SEED", random.SystemRandom().randrange(1_000_000)))


def check(result: Result) -> None:
    line = result.line() + f" (CHAOS_SEED={SEED})"
    print(line)
    assert result.settled, line
    assert result.missing == 0, line
    assert result.unexpected == 0, line
    assert result.duplicated == 0, f"{line}: {result.duplicated_examples[:5]}"
    assert result.ok, f"{line}: {result.problems}"


def test_kill_worker() -> None:
    result = kill_worker.run(N, fast=True, seed=SEED)
    check(result)
    assert result.extra["kills"] == 2
    assert result.ambiguous_dups <= result.interrupted


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server for a private Redis")
def test_redis_restart() -> None:
    result = redis_restart.run(N, fast=True, seed=SEED)
    check(result)
    assert result.extra["restarts"] == 1
    assert result.ambiguous_dups == 0


def test_provider_faults() -> None:
    result = provider_faults.run(N, fast=True, seed=SEED)
    check(result)
    # The first three requests are always a timeout (accepted anyway), a 429 and a 500.
    assert result.ambiguous_timeouts >= 1 and result.ambiguous_retries >= 1
    assert result.extra["r429"] >= 1 and result.extra["r500"] >= 1


def test_postgres_outage() -> None:
    result = postgres_restart.run(N, fast=True, seed=SEED)
    check(result)
    assert result.extra["outages"] == 1
    assert result.ambiguous_dups == 0


def test_duplicate_publish() -> None:
    result = duplicate_publish.run(N, fast=True, seed=SEED)
    check(result)
    assert result.extra["events"] <= 2
    assert result.ambiguous_dups == 0
