"""deliveries: room in every page for a whole second copy of its rows (fillfactor 45)

A claim updates every row of a 1000-row range in one statement. PostgreSQL keeps an update in the same
page (HOT: no index entries, one WAL record) only if the new version fits there, and the versions the same
statement replaced cannot be pruned until it commits. At fillfactor 70 a page had room for fewer than
half of its rows' new versions, so most of each claim spilled to other pages and wrote every index
(measured: 4,000 WAL records per 1000-row claim, 6.5 ms). Below 50% the whole claim fits in place
(1,000 WAL records, 1.5 ms); the record that follows finds the claim's old versions dead and pruned, and
stays in place too. The price is disk: about 1.6x the pages for live deliveries, which retention prunes.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25 11:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE deliveries SET (fillfactor = 45)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE deliveries SET (fillfactor = 70)")
