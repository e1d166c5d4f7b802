"""Migration 0011 (phrases mean sets of concepts) applied to a database with data, on both engines."""

from __future__ import annotations

from alembic import command
from sqlalchemy import create_engine, text

from alerts.db import alembic_config
from tests.test_migration_0002 import scratch_url

__all__ = ["scratch_url"]


def test_pinned_subscriptions_follow_their_phrase_again_and_meanings_are_seeded(scratch_url: str) -> None:
    config = alembic_config(scratch_url)
    command.upgrade(config, "0007")
    engine = create_engine(scratch_url)
    with engine.begin() as conn:
        for i in (1, 2):
            conn.execute(
                text(
                    "INSERT INTO subscribers (id, email, email_hash, manage_token, created_at) "
                    f"VALUES ({i}, 'p{i}@example.org', 'h{i}', 'm', '2026-11-01 00:00:00+00')"
                )
            )
        conn.execute(
            text(
                "INSERT INTO condition_concepts (id, term, term_key, trials, trials_with_narrower) "
                "VALUES ('D007405', 'Intervertebral Disc Displacement', 'intervertebral disc displacement', 3, 3)"
            )
        )
        conn.execute(
            text(
                'INSERT INTO condition_phrases ("key", label, trials, concept_id) '
                "VALUES ('herniated disc', 'Herniated Disc', 2, 'D007405')"
            )
        )
        rows = [
            (1, 1, "mesh:D007405", "Herniated Disc"),  # pinned: goes back to its phrase
            (2, 2, "mesh:D007405", "Herniated Disc"),  # same, but ...
            (3, 2, "herniated disc", "herniated disc"),  # ... this person already follows the phrase: stays pinned
        ]
        for sid, subscriber, target, label in rows:
            conn.execute(
                text(
                    "INSERT INTO subscriptions (id, subscriber_id, kind, target, label, status, unsubscribe_token, "
                    "created_at, include_narrower, recruiting_only) VALUES "
                    f"({sid}, {subscriber}, 'condition', '{target}', '{label}', 'active', 'u', "
                    "'2026-11-01 00:00:00+00', false, false)"
                )
            )
    command.upgrade(config, "0011")
    with engine.begin() as conn:
        targets = dict(conn.execute(text("SELECT id, target FROM subscriptions ORDER BY id")).all())
        meanings = conn.execute(text("SELECT phrase_key, concept_id FROM condition_meanings")).all()
    assert targets == {1: "herniated disc", 2: "mesh:D007405", 3: "herniated disc"}
    assert meanings == [("herniated disc", "D007405")]
    command.downgrade(config, "0007")
    command.upgrade(config, "head")
    engine.dispose()
