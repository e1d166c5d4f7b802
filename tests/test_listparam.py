"""alerts.listparam: IN over a list parameter, as one array on PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite

from alerts.db import transaction
from alerts.listparam import one_of
from alerts.models import Subscriber, Trial
from alerts.runtime import Runtime
from tests.conftest import study

AT = datetime(2026, 11, 29, tzinfo=UTC)
STATEMENT = select(Trial.nct_id).where(one_of(Trial.nct_id, "ncts")).order_by(Trial.nct_id)


def test_postgresql_gets_one_array_parameter_and_sqlite_an_expanding_in() -> None:
    on_pg = str(STATEMENT.compile(dialect=postgresql.dialect()))  # type: ignore[no-untyped-call]
    assert on_pg.split("WHERE")[1].split("ORDER BY")[0].strip() == "trials.nct_id = ANY (%(ncts)s::VARCHAR(11)[])"
    on_sqlite = str(STATEMENT.compile(dialect=sqlite.dialect()))
    assert "IN (__[POSTCOMPILE_ncts])" in on_sqlite


def test_the_statement_text_does_not_depend_on_the_lists_length(runtime: Runtime) -> None:
    engine = runtime.engine
    texts = set()
    with engine.connect() as connection:
        for ncts in (["NCT00000001"], ["NCT00000001", "NCT00000002", "NCT00000003"]):
            result = connection.execute(STATEMENT, {"ncts": ncts})
            texts.add(result.context.statement)
    assert len(texts) == (1 if engine.dialect.name == "postgresql" else 2)


@pytest.mark.parametrize("ncts", [[], ["NCT00124774"], ["NCT00124774", "NCT99999999", "NCT04015791"]])
def test_it_selects_exactly_the_listed_rows(runtime: Runtime, ncts: list[str]) -> None:
    engine = runtime.engine
    with transaction(engine) as session:
        for nct in ("NCT00124774", "NCT04015791", "NCT00763412"):
            record = study(nct)
            session.add(Trial(nct_id=nct, title=nct, record=record, fingerprint="f", version_at=AT))
    with transaction(engine) as session:
        found = list(session.scalars(STATEMENT, {"ncts": ncts}))
    assert found == sorted(set(ncts) & {"NCT00124774", "NCT04015791", "NCT00763412"})


def test_it_caches_one_compiled_form_per_column_and_name() -> None:
    assert one_of(Trial.nct_id, "a")._generate_cache_key() == one_of(Trial.nct_id, "a")._generate_cache_key()
    assert one_of(Trial.nct_id, "a")._generate_cache_key() != one_of(Trial.nct_id, "b")._generate_cache_key()
    assert one_of(Trial.nct_id, "a")._generate_cache_key() != one_of(Subscriber.email, "a")._generate_cache_key()
