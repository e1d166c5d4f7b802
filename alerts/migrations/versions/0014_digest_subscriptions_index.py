"""A partial index of the active digest subscriptions, by target

Matching asks it, for every event, whether anyone follows the event's targets with a daily or weekly
digest (most events: nobody), and which subscribers to rank when someone does; without it, holding items
ranked every follower of the event (alerts.matching._digest_audience).

Revision ID: 0014
Revises: 0012
Create Date: 2026-11-29 01:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The same predicate as alerts.models.DIGEST_WHERE (a migration keeps its own copy of what it creates).
DIGEST_WHERE = "frequency <> 'immediately' AND status = 'active'"


def upgrade() -> None:
    op.create_index(
        "ix_subscriptions_digest",
        "subscriptions",
        ["kind", "target", "subscriber_id"],
        postgresql_where=sa.text(DIGEST_WHERE),
        sqlite_where=sa.text(DIGEST_WHERE),
    )


def downgrade() -> None:
    op.drop_index("ix_subscriptions_digest", "subscriptions")
