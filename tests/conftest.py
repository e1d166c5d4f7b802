"""Shared fixtures: real PostgreSQL and SQLite databases, real Redis, settings, runtimes."""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import re
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import structlog
from sqlalchemy import Engine, text

from alerts.config import Settings, load_settings
from alerts.db import upgrade
from alerts.logs import configure_logging
from alerts.models import Base
from alerts.runtime import Runtime, set_runtime
from alerts.transports.memory import MemoryTransport

FIXTURES = Path(__file__).parent / "fixtures"
STUDIES = FIXTURES / "ctgov" / "studies"
PG_ADMIN = os.environ.get("ALERTS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("ALERTS_TEST_REDIS", "redis://127.0.0.1:6379")
SECRET = "test-secret-key-0123456789abcdef"


def study(nct_id: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((STUDIES / f"{nct_id}.json").read_text())
    return copy.deepcopy(data)


def all_studies() -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(STUDIES.glob("NCT*.json"))]


@pytest.fixture(scope="session")
def pg_schema_url() -> Iterator[str]:
    """A private schema in the `test` database for this run, dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    url = PG_ADMIN.replace("postgresql://", "postgresql+psycopg://") + f"?options=-csearch_path%3D{schema}"
    upgrade(url)
    yield url
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'alerts.db'}"
    upgrade(url)
    return url


def _truncate(engine: Engine) -> None:
    tables = [t.name for t in reversed(Base.metadata.sorted_tables)]
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        else:
            for table in tables:
                conn.execute(text(f"DELETE FROM {table}"))


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    name = "sqlite_url" if request.param == "sqlite" else "pg_schema_url"
    return str(request.getfixturevalue(name))


def make_settings(db_url: str, tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "env": "test",
        "database_url": db_url,
        "secret_key": SECRET,
        "email_backend": "memory",
        "outbox_dir": tmp_path / "outbox",
        "base_url": "https://alerts.example.org",
        "from_email": "alerts@alerts.example.org",
        "ingest_token": "ingest-token-for-tests",
        "ops_token": "ops-token-for-tests",
    }
    return load_settings(**(values | overrides))


@dataclass
class InlineEnqueue:
    """Runs queued work in this process right away (tests that are not about the broker)."""

    runtime: Runtime
    batches: list[tuple[int, int, int]] = field(default_factory=list)
    confirmations: list[int] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    webhooks: list[list[dict[str, Any]]] = field(default_factory=list)
    fan_outs: list[int] = field(default_factory=list)
    signups: list[int] = field(default_factory=list)
    digest_batches: list[tuple[int, int]] = field(default_factory=list)

    def trial_event(self, payload: dict[str, Any]) -> None:
        from alerts.pipeline import ingest

        self.events.append(payload)
        ingest(self.runtime, payload, self, source="test")

    def send_batch(self, event_id: int, after_id: int, upto_id: int) -> None:
        from alerts.pipeline import deliver

        self.batches.append((event_id, after_id, upto_id))
        deliver(self.runtime, event_id, after_id, upto_id)

    def send_digests(self, after_id: int, upto_id: int) -> None:
        from alerts.pipeline import send_digests

        self.digest_batches.append((after_id, upto_id))
        send_digests(self.runtime, after_id, upto_id)

    def fan_out(self, event_id: int) -> None:
        from alerts.pipeline import fan_out

        self.fan_outs.append(event_id)
        fan_out(self.runtime, event_id, self)

    def process_webhook(self, events: list[dict[str, Any]]) -> None:
        from alerts.webhooks import apply_events

        self.webhooks.append(events)
        apply_events(self.runtime.engine, self.runtime.hasher, events)

    def send_confirmation(self, subscription_id: int, also: Sequence[int] = ()) -> None:
        from alerts.pipeline import send_confirmation

        self.confirmations.append(subscription_id)
        send_confirmation(self.runtime, subscription_id, also)

    def process_signup(self, request_id: int) -> None:
        from alerts.pipeline import process_signup

        self.signups.append(request_id)
        process_signup(self.runtime, request_id, self)


@pytest.fixture
def runtime(db_url: str, tmp_path: Path) -> Iterator[Runtime]:
    rt = Runtime(make_settings(db_url, tmp_path))
    rt.transport = MemoryTransport()  # a fresh outbox per test
    _truncate(rt.engine)
    set_runtime(rt)
    yield rt
    set_runtime(None)
    rt.engine.dispose()


@pytest.fixture
def memory(runtime: Runtime) -> MemoryTransport:
    assert isinstance(runtime.transport, MemoryTransport)
    return runtime.transport


@pytest.fixture
def inline(runtime: Runtime) -> InlineEnqueue:
    return InlineEnqueue(runtime)


class _RawLogs(logging.Handler):
    """Every log line of the run, rendered WITHOUT the address-masking processor: proves our code never
    logs an address (the masking in alerts.logs is only a second line of defence)."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                foreign_pre_chain=[structlog.stdlib.add_log_level],
                processors=[
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.JSONRenderer(default=str),
                ],
            )
        )

    # Loggers of the test peers that stand in for the recipient's side (aiosmtpd, the local SMTP server the
    # SMTP transport talks to): a mail server logs addresses by nature; they are not our logs.
    PEERS = ("mail.log",)

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(self.PEERS):
            return
        # A line we cannot render is not an address leak.
        with contextlib.suppress(Exception):
            self.lines.append(self.format(record))


RAW_LOGS = _RawLogs()
ADDRESS = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}")


@pytest.fixture(scope="session", autouse=True)
def _log_everything_as_json() -> Iterator[None]:
    configure_logging(load_settings(log_format="json", log_level="INFO"))
    logging.getLogger().addHandler(RAW_LOGS)
    yield
    logging.getLogger().removeHandler(RAW_LOGS)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    leaks = [line for line in RAW_LOGS.lines if ADDRESS.search(line)]
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    say = reporter.write_line if reporter is not None else print
    if leaks:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        say(f"log scan: {len(leaks)} log line(s) contain an email address, e.g.:")
        for line in leaks[:5]:
            say("  " + line[:300])
    else:
        say(f"log scan: {len(RAW_LOGS.lines)} log lines of this run, none with an email address")
