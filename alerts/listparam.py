"""``column IN (<a list bound at execution>)`` whose SQL text does not depend on the list's length.

SQLAlchemy's expanding IN renders one placeholder per value, so a statement run with lists of 1, 2 and 7
values is three statements to PostgreSQL: each planned anew (the matching INSERT of a new trial took 4-9 ms
to plan and 1.3 ms to run), none reused by psycopg's prepared statements. On PostgreSQL ``one_of`` renders
``column = ANY(:name)`` with the list sent as one array: one text per statement shape, prepared once per
connection and planned generically once PostgreSQL finds that as good as planning each call. Elsewhere
(SQLite) it is the usual expanding IN.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Boolean, any_, bindparam
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import QueryableAttribute
from sqlalchemy.sql import coercions, roles
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.visitors import InternalTraversal


class OneOf(ColumnElement[bool]):
    """The column equals one of the values of the list parameter ``name``."""

    __visit_name__ = "one_of"
    # Part of the statement's cache key: two OneOf differ by column or parameter name only.
    _traverse_internals = [
        ("column", InternalTraversal.dp_clauseelement),
        ("name", InternalTraversal.dp_string),
    ]
    type = Boolean()

    def __init__(self, column: ColumnElement[Any], name: str) -> None:
        self.column = column
        self.name = name


def one_of(column: ColumnElement[Any] | QueryableAttribute[Any], name: str) -> OneOf:
    """``column IN :name`` (a list), as one array parameter on PostgreSQL."""
    return OneOf(coercions.expect(roles.ExpressionElementRole, column), name)


@compiles(OneOf)
def _expanding_in(element: OneOf, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(element.column.in_(bindparam(element.name, expanding=True)), **kw))


@compiles(OneOf, "postgresql")
def _any_array(element: OneOf, compiler: Any, **kw: Any) -> str:
    array = bindparam(element.name, type_=ARRAY(element.column.type))
    return str(compiler.process(element.column == any_(array), **kw))
