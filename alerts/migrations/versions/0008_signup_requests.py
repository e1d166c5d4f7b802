"""signup_requests: sign-ups recorded by the web request and decided by a worker

The request path does the same work for every address (record, queue); who is new, pending or already
following is decided in the worker (alerts.signups), so response times do not reveal subscribers.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28 22:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import alerts.models

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "signup_requests",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("targets", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("options", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=True),
        sa.Column("created_at", alerts.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("queued_at", alerts.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_signup_requests")),
    )
    op.create_index(op.f("ix_signup_requests_queued_at"), "signup_requests", ["queued_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_signup_requests_queued_at"), table_name="signup_requests")
    op.drop_table("signup_requests")
