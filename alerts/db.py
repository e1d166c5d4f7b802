"""Engine and sessions. One engine per process and database URL; sessions are short units of work."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

from alerts import jsontext

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

# Transaction-scoped advisory locks, keyed by a number and the schema: deployments (and test runs) sharing one
# database in different schemas never wait on each other.
_XACT_LOCK: Final = "SELECT pg_advisory_xact_lock{mode}(hashtext(current_schema()), :key)"
_XACT_LOCKS: Final = {shared: text(_XACT_LOCK.format(mode="_shared" if shared else "")) for shared in (False, True)}


def xact_lock(session: Session, key: int, *, shared: bool = False) -> bool:
    """Wait for the advisory lock ``key`` (shared or exclusive) until this transaction ends, on PostgreSQL:
    True. Taken again by the same transaction, it returns at once. Elsewhere nothing is taken (False):
    SQLite serializes writers with its database lock."""
    if session.get_bind().dialect.name != "postgresql":
        return False
    session.execute(_XACT_LOCKS[shared], {"key": key})
    return True


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the web process read while a worker writes; foreign keys are off by default in SQLite.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
    # Distances in SQL use radians/sin/cos/asin/sqrt/floor, which not every SQLite build has.
    from alerts.places import sqlite_functions

    sqlite_functions(dbapi_connection)


def _postgres_session(dbapi_connection: Any, _record: Any) -> None:
    # Our statements are short and planned often: JIT compilation costs 50-300 ms on the large
    # INSERT ... SELECT and batch claims and never pays back within one statement.
    with dbapi_connection.cursor() as cursor:
        cursor.execute("SET jit = off")
    dbapi_connection.commit()


def json_dumps(value: Any) -> str:
    """JSON columns are written by orjson (a stored snapshot is a ~10 KB record: several times faster than
    json.dumps), json.dumps for what orjson refuses (``alerts.jsontext``)."""
    return jsontext.dumps(value).decode("utf-8")


def make_engine(url: str, **kwargs: Any) -> Engine:
    kwargs.setdefault("json_serializer", json_dumps)
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1].split("?", 1)[0]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if "poolclass" not in kwargs:
        kwargs |= {"pool_pre_ping": True, "pool_size": 5, "max_overflow": 10}
    engine = create_engine(url, **kwargs)
    event.listen(engine, "connect", _postgres_session)
    return engine


@lru_cache(maxsize=8)
def engine_for(url: str) -> Engine:
    return make_engine(url)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """A session whose work commits on success and rolls back on any error: nothing half-applied."""
    with session_factory(engine)() as session, session.begin():
        yield session


@lru_cache(maxsize=8)
def autocommit(engine: Engine) -> Engine:
    """The same pool, each statement committed on its own: a single read is one round trip, no BEGIN/ROLLBACK."""
    return engine.execution_options(isolation_level="AUTOCOMMIT")


def alembic_config(url: str) -> Config:
    # Imported here, not at the top: only migrations need Alembic, and every worker and web process would
    # otherwise carry it (several MiB each).
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(alembic_config(url), revision)
