"""digests: room in every page for a second copy of its rows (fillfactor 45), as deliveries (0006)

A send claims a 1000-digest range in one UPDATE and records the outcome in another. The tick writes the
rows densely, so without free space each claim's new versions spill to other pages and write both
indexes, and the record does it again (measured on the digest benchmark: the record UPDATE of 1,000
rows took tens of milliseconds, most of it index writes). At fillfactor 45 both updates stay in place
(HOT), as 0006 measured for deliveries. The price is disk for live digests, which retention prunes.

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-29 01:20:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE digests SET (fillfactor = 45)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE digests RESET (fillfactor)")
