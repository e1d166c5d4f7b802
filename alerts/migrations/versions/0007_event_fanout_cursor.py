"""events.fanout_cursor / fanout_at: a large fan-out creates its deliveries chunk by chunk

Sending starts after the first chunk commits instead of after every delivery row exists; the cursor lets a
fan-out whose worker died be resumed by maintenance (alerts.fanout).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25 11:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import alerts.models

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMNs on both engines (no batch rebuild: see 0002 on why rebuilding tables is avoided).
    op.add_column("events", sa.Column("fanout_cursor", sa.BigInteger().with_variant(sa.Integer(), "sqlite")))
    op.add_column("events", sa.Column("fanout_at", alerts.models.UTCDateTime(timezone=True)))


def downgrade() -> None:
    op.drop_column("events", "fanout_at")
    op.drop_column("events", "fanout_cursor")
