"""events.match: how each event was matched, for replays

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 09:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A plain ADD COLUMN on both engines (no batch rebuild: see 0002 on why rebuilding tables is avoided).
    op.add_column("events", sa.Column("match", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=True))


def downgrade() -> None:
    op.drop_column("events", "match")
