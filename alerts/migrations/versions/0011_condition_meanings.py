"""condition phrases mean sets of concepts; subscriptions follow their phrase

``condition_meanings`` (every concept a phrase means), ``condition_ancestry`` (which concepts NLM files
under which: the broader/narrower rule) and ``condition_resolutions`` (why a phrase's meaning changed).
Existing meanings are seeded from each phrase's one concept; condition subscriptions pinned to a concept
("mesh:D007405") go back to following their phrase (the key of their label), so that they move with it
from now on. ``alerts vocabulary learn`` then counts the ancestry of trials learned before this revision.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-28 22:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import alerts.models
from alerts.conditions import condition_key

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "condition_meanings",
        sa.Column("phrase_key", sa.String(length=300), nullable=False),
        sa.Column("concept_id", sa.String(length=12), nullable=False),
        sa.ForeignKeyConstraint(
            ["concept_id"], ["condition_concepts.id"], name=op.f("fk_condition_meanings_concept_id_condition_concepts")
        ),
        sa.ForeignKeyConstraint(
            ["phrase_key"], ["condition_phrases.key"], name=op.f("fk_condition_meanings_phrase_key_condition_phrases")
        ),
        sa.PrimaryKeyConstraint("phrase_key", "concept_id", name=op.f("pk_condition_meanings")),
    )
    op.create_index(op.f("ix_condition_meanings_concept_id"), "condition_meanings", ["concept_id"], unique=False)
    op.create_table(
        "condition_ancestry",
        sa.Column("concept_id", sa.String(length=12), nullable=False),
        sa.Column("ancestor_id", sa.String(length=12), nullable=False),
        sa.Column("together", sa.Integer(), nullable=False),
        sa.Column("as_ancestor", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("concept_id", "ancestor_id", name=op.f("pk_condition_ancestry")),
    )
    op.create_table(
        "condition_resolutions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("phrase_key", sa.String(length=300), nullable=False),
        sa.Column("resolved_at", alerts.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("before", alerts.models.Json, nullable=False),
        sa.Column("after", alerts.models.Json, nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("subscriptions", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_condition_resolutions")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_condition_resolutions_phrase_key"), "condition_resolutions", ["phrase_key"], unique=False)

    bind = op.get_bind()
    bind.execute(
        sa.text(
            'INSERT INTO condition_meanings (phrase_key, concept_id) SELECT "key", concept_id '
            "FROM condition_phrases WHERE concept_id IS NOT NULL"
        )
    )
    # Pinned subscriptions follow their phrase again, unless the same person already follows that phrase
    # (one person, one subscription per target): such a row stays pinned to its concept, which matching
    # still honours.
    pinned = bind.execute(
        sa.text("SELECT id, subscriber_id, label FROM subscriptions WHERE kind = 'condition' AND target LIKE 'mesh:%'")
    ).all()
    taken = {
        (subscriber, target)
        for subscriber, target in bind.execute(
            sa.text("SELECT subscriber_id, target FROM subscriptions WHERE kind = 'condition'")
        )
    }
    move = sa.text("UPDATE subscriptions SET target = :t WHERE id = :i")
    for subscription_id, subscriber_id, label in pinned:
        key = condition_key(label)
        if key and (subscriber_id, key) not in taken:
            taken.add((subscriber_id, key))
            bind.execute(move, {"t": key, "i": subscription_id})


def downgrade() -> None:
    # Subscriptions stay on their phrase: 0002's code moves them to the phrase's concept as records teach it.
    op.drop_index(op.f("ix_condition_resolutions_phrase_key"), table_name="condition_resolutions")
    op.drop_table("condition_resolutions")
    op.drop_table("condition_ancestry")
    op.drop_index(op.f("ix_condition_meanings_concept_id"), table_name="condition_meanings")
    op.drop_table("condition_meanings")
