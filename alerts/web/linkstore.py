"""Where the link pages' statements (``alerts.linkstate``) run.

On PostgreSQL, once the app has started (its lifespan): on the event loop, through psycopg's async driver and
a small pool of its own (psycopg_pool), in autocommit. Measured with py-spy (benchmarks/README.md), handing
each page's one statement to a worker thread cost more than the statement itself: the wake-up of a pool
thread and the GIL passed back and forth. SQLite (the embedded default), and an app that was not started (a
test client used without ``with``), run the same statements in the threadpool with the process's engine.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg
import structlog
from fastapi import FastAPI
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from sqlalchemy import ClauseElement, Engine
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
from sqlalchemy.engine import make_url
from sqlalchemy.sql.compiler import SQLCompiler
from starlette.concurrency import run_in_threadpool

from alerts import linkstate
from alerts.linkstate import LinkState, Listed
from alerts.runtime import Runtime

log = structlog.get_logger("alerts.web.linkstore")

# Connections per web process for the link pages. A statement holds one for a single round trip, so a few
# serve thousands of pages a second; requests beyond them wait their turn in the pool, which costs some CPU
# per waiter (4 connections measured slower than 8 under 50 concurrent requests per process). More would
# crowd PostgreSQL's max_connections (100 by default): see docs/operations.md for the sum.
POOL_SIZE = 8


class LinkStore(Protocol):
    async def read(self, subscription_id: int) -> LinkState | None: ...

    async def unsubscribe(self, subscription_id: int, *, every: bool) -> LinkState | None: ...

    async def listed(self, subscriber_id: int) -> list[Listed] | None: ...


@dataclass(frozen=True)
class ThreadLinkStore:
    """The process's engine, one worker thread per statement."""

    engine: Engine

    async def read(self, subscription_id: int) -> LinkState | None:
        return await run_in_threadpool(linkstate.read, self.engine, subscription_id)

    async def unsubscribe(self, subscription_id: int, *, every: bool) -> LinkState | None:
        return await run_in_threadpool(lambda: linkstate.unsubscribe(self.engine, subscription_id, every=every))

    async def listed(self, subscriber_id: int) -> list[Listed] | None:
        return await run_in_threadpool(linkstate.listed, self.engine, subscriber_id)


_DIALECT = PGDialect_psycopg()  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class _Compiled:
    """A statement of ``alerts.linkstate`` compiled once for PostgreSQL, with its fixed parameters."""

    sql: str
    fixed: dict[str, Any]

    @classmethod
    def of(cls, statement: ClauseElement) -> _Compiled:
        compiled = statement.compile(dialect=_DIALECT)
        assert isinstance(compiled, SQLCompiler)
        required = {name: None for name, bind in compiled.binds.items() if bind.required}
        fixed = {
            # Plain str for our StrEnum values (status 'unsubscribed'...), as SQLAlchemy would send them.
            name: str(value) if isinstance(value, str) else value
            for name, value in (compiled.construct_params(required) or {}).items()
            if name not in required
        }
        return cls(compiled.string, fixed)


_STATE = _Compiled.of(linkstate.STATE)
_FILTERS = _Compiled.of(linkstate.FILTERS)
_UNSUBSCRIBE_AND_READ = {every: _Compiled.of(s) for every, s in linkstate.UNSUBSCRIBE_AND_READ.items()}
_LISTED = _Compiled.of(linkstate.LISTED)


@dataclass(frozen=True)
class AsyncLinkStore:
    """psycopg's async driver on the event loop, through psycopg's own pool, in autocommit.

    The statements are ``alerts.linkstate``'s, compiled once by SQLAlchemy. Measured here, SQLAlchemy's async
    engine added about 300 µs of CPU per statement (greenlet hand-offs, pool checkout and reset); psycopg
    with psycopg_pool spends about 150 µs on the same read (benchmarks/README.md).
    """

    pool: AsyncConnectionPool

    @classmethod
    def for_url(cls, url: str, pool_size: int = POOL_SIZE, timeout_s: float = 10.0) -> AsyncLinkStore:
        conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        # No check on checkout (a round trip per page): a connection the server dropped fails its statement,
        # the pool discards it, and ``_fetch`` tries another. The name tells them apart in pg_stat_activity.
        pool = AsyncConnectionPool(
            conninfo,
            min_size=pool_size,
            max_size=pool_size,
            kwargs={"autocommit": True, "application_name": "alerts-web-links"},
            timeout=timeout_s,
            open=False,
        )
        return cls(pool)

    async def open(self) -> None:
        # Not waiting for the connections: the app starts even while PostgreSQL is still coming up.
        await self.pool.open(wait=False)

    async def close(self) -> None:
        await self.pool.close()

    async def _fetch(self, statement: _Compiled, **params: Any) -> list[tuple[Any, ...]]:
        # Every statement here is a read or an idempotent unsubscribe: safe to run again on another connection.
        for attempt in range(POOL_SIZE + 1):
            try:
                async with self.pool.connection() as conn:
                    cursor = await conn.execute(statement.sql, statement.fixed | params)
                    return await cursor.fetchall()
            except PoolTimeout:
                # No connection within the pool's timeout (PostgreSQL down): waiting again would only add to it.
                raise
            except psycopg.OperationalError as exc:
                # The server closed the connection (restart, failover): the pool drops it; the others may be
                # gone too, hence as many tries as connections.
                if attempt == POOL_SIZE:
                    raise
                log.warning("linkstore.reconnect", error=type(exc).__name__)
        raise AssertionError("unreachable")

    async def _state(self, rows: list[tuple[Any, ...]]) -> LinkState | None:
        if not rows:
            return None
        filter_rows = await self._fetch(_FILTERS, subscription_id=rows[0][0]) if linkstate.has_filters(rows[0]) else []
        return linkstate.state_of(rows[0], filter_rows)

    async def read(self, subscription_id: int) -> LinkState | None:
        return await self._state(await self._fetch(_STATE, subscription_id=subscription_id))

    async def unsubscribe(self, subscription_id: int, *, every: bool) -> LinkState | None:
        params = linkstate.unsubscribe_params(subscription_id)
        return await self._state(await self._fetch(_UNSUBSCRIBE_AND_READ[every], **params))

    async def listed(self, subscriber_id: int) -> list[Listed] | None:
        return linkstate.listed_of(await self._fetch(_LISTED, subscriber_id=subscriber_id))


def install(app: FastAPI, runtime: Runtime) -> None:
    """The threadpool store until the app starts; the async one while it runs (PostgreSQL)."""
    app.state.links = ThreadLinkStore(runtime.engine)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    runtime: Runtime = app.state.runtime
    url = runtime.settings.database_url
    if make_url(url).get_backend_name() != "postgresql":
        yield
        return
    store = AsyncLinkStore.for_url(url)
    await store.open()
    before, app.state.links = app.state.links, store
    try:
        yield
    finally:
        app.state.links = before
        await store.close()
