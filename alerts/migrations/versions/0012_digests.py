"""digests: frequency per subscription, the subscriber's own time, held items, one digest per window

Subscriptions get a frequency (immediately / daily / weekly); subscribers a time zone, local hour and
weekday, plus the next window close the schedule tick looks for. New tables: held_items (matched events
waiting for a digest), digests (unique per subscriber and window), trial_versions (records by material
fingerprint, for net changes) and digest_fragments (entries rendered once). See alerts/digests/.

Revision ID: 0012
Revises: 0013
Create Date: 2026-11-28 22:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import alerts.models

revision: str = "0012"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    # Plain ADD COLUMNs with server defaults on both engines (no batch rebuild: see 0002 on why).
    op.add_column("subscriptions", sa.Column("frequency", sa.String(16), nullable=False, server_default="immediately"))
    op.add_column("subscribers", sa.Column("time_zone", sa.String(64), nullable=False, server_default="UTC"))
    op.add_column("subscribers", sa.Column("digest_hour", sa.Integer(), nullable=False, server_default="8"))
    op.add_column("subscribers", sa.Column("digest_weekday", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("subscribers", sa.Column("digest_cadence", sa.String(16), nullable=True))
    op.add_column("subscribers", sa.Column("digest_due_at", alerts.models.UTCDateTime(timezone=True), nullable=True))
    op.add_column("subscribers", sa.Column("digest_daily_upto", BigId, nullable=False, server_default="0"))
    op.add_column("subscribers", sa.Column("digest_weekly_upto", BigId, nullable=False, server_default="0"))
    op.create_index("ix_subscribers_digest_due_at", "subscribers", ["digest_due_at"])

    op.create_table(
        "held_items",
        sa.Column("id", BigId, nullable=False),
        sa.Column("event_id", BigId, nullable=False),
        sa.Column("subscriber_id", BigId, nullable=False),
        sa.Column("subscription_id", BigId, nullable=False),
        sa.Column("dedupe_key", sa.String(200), nullable=False),
        sa.Column("variant", sa.String(300), nullable=True),
        sa.Column("weekly", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("created_at", alerts.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_held_items"),
        sa.UniqueConstraint("dedupe_key", "subscriber_id", name="uq_held_items_dedupe_subscriber"),
    )
    op.create_index("ix_held_items_subscriber_id_id", "held_items", ["subscriber_id", "id"])
    op.create_index("ix_held_items_event_id", "held_items", ["event_id"])
    op.create_index("ix_held_items_subscription_id", "held_items", ["subscription_id"])

    op.create_table(
        "digests",
        sa.Column("id", BigId, nullable=False),
        sa.Column("subscriber_id", BigId, nullable=True),
        sa.Column("window_at", alerts.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("weekly", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("daily_after", BigId, nullable=False),
        sa.Column("weekly_after", BigId, nullable=False),
        sa.Column("upto", BigId, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("items", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease_until", alerts.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("provider_message_id", sa.String(200), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", alerts.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", alerts.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("sent_at", alerts.models.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_digests"),
        sa.UniqueConstraint("subscriber_id", "window_at", name="uq_digests_subscriber_window"),
        # Digest ids are in signed one-click links: SQLite must never hand one out twice.
        sqlite_autoincrement=True,
    )
    op.create_table(
        "trial_versions",
        sa.Column("nct_id", sa.String(11), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("record", Json, nullable=False),
        sa.Column("created_at", alerts.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("nct_id", "fingerprint", name="pk_trial_versions"),
    )
    op.create_table(
        "digest_fragments",
        sa.Column("key", sa.String(400), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("importance", sa.Integer(), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("html", sa.Text(), nullable=False),
        sa.Column("created_at", alerts.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_digest_fragments"),
    )


def downgrade() -> None:
    op.drop_table("digest_fragments")
    op.drop_table("trial_versions")
    op.drop_table("digests")
    op.drop_index("ix_held_items_subscription_id", "held_items")
    op.drop_index("ix_held_items_event_id", "held_items")
    op.drop_index("ix_held_items_subscriber_id_id", "held_items")
    op.drop_table("held_items")
    op.drop_index("ix_subscribers_digest_due_at", "subscribers")
    for column in (
        "digest_weekly_upto",
        "digest_daily_upto",
        "digest_due_at",
        "digest_cadence",
        "digest_weekday",
        "digest_hour",
        "time_zone",
    ):
        op.drop_column("subscribers", column)
    op.drop_column("subscriptions", "frequency")
