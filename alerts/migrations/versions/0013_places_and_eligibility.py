"""Places and eligibility: subscribers' optional city, distance, age and sex; cities; trial sites

"Can I take part?" (issue 16): a subscriber may give a gazetteer city (its id only) and a distance, an age
and a sex; ``cities`` holds the public gazetteer rows of the chosen cities and ``trial_sites`` the
coordinates of each stored trial's sites, so matching measures distances in SQL. Existing trials get their
sites from their stored records here.

Revision ID: 0013
Revises: 0011
Create Date: 2026-11-28 22:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMN / CREATE TABLE on both engines (no batch rebuild: see 0002 on why).
    op.add_column("subscribers", sa.Column("city_id", sa.Integer()))
    op.add_column("subscribers", sa.Column("distance_km", sa.Float()))
    op.add_column("subscribers", sa.Column("distance_unit", sa.String(2)))
    op.add_column(
        "subscribers", sa.Column("recruiting_sites_only", sa.Boolean(), nullable=False, server_default=sa.false())
    )
    op.add_column("subscribers", sa.Column("age", sa.Integer()))
    op.add_column("subscribers", sa.Column("sex", sa.String(6)))
    op.create_table(
        "cities",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("lat", sa.Float(), nullable=False),
        sa.Column("lon", sa.Float(), nullable=False),
        sa.Column("lon_span", sa.Float(), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cities")),
    )
    sites = op.create_table(
        "trial_sites",
        sa.Column("nct_id", sa.String(11), nullable=False),
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("lat", sa.Float(), nullable=False),
        sa.Column("lon", sa.Float(), nullable=False),
        sa.Column("recruiting", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("nct_id", "seq", name=op.f("pk_trial_sites")),
    )
    op.create_index("ix_trial_sites_nct_id_lat", "trial_sites", ["nct_id", "lat"])
    if op.get_bind().dialect.name == "postgresql":
        # A variant is now a followed label (up to 300) plus a nearby-site outcome. Raising a varchar limit
        # is a catalog change in PostgreSQL, no rewrite; SQLite does not enforce lengths.
        op.alter_column("deliveries", "variant", type_=sa.String(400), existing_type=sa.String(300))
        op.alter_column("event_contents", "variant", type_=sa.String(400), existing_type=sa.String(300))
    from alerts.places import sites as record_sites

    trials = sa.table("trials", sa.column("nct_id", sa.String()), sa.column("record", sa.JSON()))
    connection = op.get_bind()
    rows = []
    for nct_id, record in connection.execute(sa.select(trials.c.nct_id, trials.c.record)):
        if not isinstance(record, dict):
            continue
        rows += [
            {"nct_id": nct_id, "seq": s.seq, "lat": s.lat, "lon": s.lon, "recruiting": s.recruiting}
            for s in record_sites(record)
            if s.lat is not None and s.lon is not None
        ]
        if len(rows) >= 5000:
            op.bulk_insert(sites, rows)
            rows = []
    if rows:
        op.bulk_insert(sites, rows)


def downgrade() -> None:
    op.drop_index("ix_trial_sites_nct_id_lat", table_name="trial_sites")
    op.drop_table("trial_sites")
    op.drop_table("cities")
    for column in ("sex", "age", "recruiting_sites_only", "distance_unit", "distance_km", "city_id"):
        op.drop_column("subscribers", column)
