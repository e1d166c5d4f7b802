"""watch_state, watch_records: the registry watcher's cursor, lock and per-trial content hashes

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-28 22:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import alerts.models

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    # Plain CREATE TABLEs (no rebuilds; see 0002).
    op.create_table(
        "watch_state",
        sa.Column("name", sa.String(20), primary_key=True),
        sa.Column("cursor", sa.Date()),
        sa.Column("data_timestamp", sa.String(40)),
        sa.Column("lock_owner", sa.String(200)),
        sa.Column("lock_until", alerts.models.UTCDateTime(timezone=True)),
        sa.Column("pass_window", sa.Date()),
        sa.Column("pass_bootstrap", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("pass_data_timestamp", sa.String(40)),
        sa.Column("pass_page_token", sa.Text()),
        sa.Column("pass_page_offset", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("pass_started_at", alerts.models.UTCDateTime(timezone=True)),
        sa.Column("pass_max_seen", sa.Date()),
        sa.Column("pass_counts", Json, nullable=False, server_default="{}"),
        sa.Column("last_pass", Json),
        sa.Column("last_success_at", alerts.models.UTCDateTime(timezone=True)),
        sa.Column("last_error", sa.Text()),
        sa.Column("last_error_at", alerts.models.UTCDateTime(timezone=True)),
        sa.PrimaryKeyConstraint("name", name="pk_watch_state"),
    )
    op.create_table(
        "watch_records",
        sa.Column("nct_id", sa.String(11), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("last_update", sa.String(10)),
        sa.Column("seen_at", alerts.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("nct_id", name="pk_watch_records"),
    )


def downgrade() -> None:
    op.drop_table("watch_records")
    op.drop_table("watch_state")
