"""SQLAlchemy Core statements compiled once for PostgreSQL, run on psycopg's own connections (``alerts.web.linkstore``).

The web's lean paths (link pages, one-click unsubscribe, the sign-up's INSERT) skip the ORM and SQLAlchemy's
execution machinery per request, but keep the statements in Core: table and column names are checked, and the
SQL stays next to the models it reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Delete, Insert, Select, Update
from sqlalchemy.dialects import postgresql


@dataclass(frozen=True)
class Statement:
    """A statement compiled once for psycopg: its SQL and the values of its constant parameters."""

    sql: str
    constants: dict[str, Any]

    def params(self, **values: Any) -> dict[str, Any]:
        return self.constants | values


def compiled(statement: Select[Any] | Insert | Update | Delete) -> Statement:
    result = statement.compile(dialect=postgresql.psycopg.dialect())  # type: ignore[no-untyped-call]
    return Statement(str(result), {k: v for k, v in result.params.items() if v is not None})
