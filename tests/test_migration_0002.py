"""Migration 0002 (condition vocabulary) applied to a database with data, on both engines."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from alembic import command
from sqlalchemy import create_engine, text

from alerts.db import alembic_config
from tests.conftest import PG_ADMIN


@pytest.fixture(params=["sqlite", "postgresql"])
def scratch_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'scratch.db'}"
        return
    schema = f"m_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    yield PG_ADMIN.replace("postgresql://", "postgresql+psycopg://") + f"?options=-csearch_path%3D{schema}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


def test_upgrade_keeps_subscriptions_and_deliveries_and_downgrades(scratch_url: str) -> None:
    config = alembic_config(scratch_url)
    command.upgrade(config, "0001")
    engine = create_engine(scratch_url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO subscribers (id, email, email_hash, manage_token, created_at) "
                "VALUES (1, 'a@example.org', 'h', 'm', '2026-11-01 00:00:00+00')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO subscriptions (id, subscriber_id, kind, target, label, status, unsubscribe_token, "
                "created_at) VALUES (7, 1, 'condition', 'herniated disc', 'Herniated Disc', 'active', 'u', "
                "'2026-11-01 00:00:00+00')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO events (id, idempotency_key, type, nct_id, occurred_at, received_at, status, changes, "
                "recipients) VALUES (1, 'k', 'trial.new_for_condition', 'NCT00124774', '2026-11-01 00:00:00+00', "
                "'2026-11-01 00:00:00+00', 'fanned_out', '[]', 1)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO deliveries (event_id, subscriber_id, subscription_id, dedupe_key, status, attempts, "
                "ambiguous_retries, created_at, updated_at) VALUES (1, 1, 7, 'new:NCT00124774', 'sent', 1, 0, "
                "'2026-11-01 00:00:00+00', '2026-11-01 00:00:00+00')"
            )
        )
    command.upgrade(config, "head")
    with engine.begin() as conn:
        assert conn.execute(text("SELECT subscription_id, variant FROM deliveries")).all() == [(7, None)]
        flags = conn.execute(text("SELECT include_narrower, recruiting_only FROM subscriptions")).one()
        assert not any(flags)
    if scratch_url.startswith("sqlite"):
        # Columns were added in place: the table keeps AUTOINCREMENT (ids of erased people are never reused).
        path = scratch_url.removeprefix("sqlite:///")
        with sqlite3.connect(path) as raw:
            (ddl,) = raw.execute("SELECT sql FROM sqlite_master WHERE name = 'subscriptions'").fetchone()
        assert "AUTOINCREMENT" in ddl
    command.check(config)  # models and migrations agree
    command.downgrade(config, "0001")
    with engine.begin() as conn:
        assert conn.execute(text("SELECT subscription_id FROM deliveries")).all() == [(7,)]
    command.upgrade(config, "head")
    engine.dispose()
