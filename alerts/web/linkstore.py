"""The link pages' lean read path on PostgreSQL: ``alerts.linkreads``' statements on psycopg's async connections.

Why not the ORM session the rest of the web uses: a link page through it was 6-8 round trips (pool ping,
BEGIN, one SELECT per thing the page names, COMMIT) in a worker thread; here it is one statement, in
autocommit (a single read needs no transaction), awaited on the event loop. Measured in
benchmarks/README.md. One pool per web process, opened when the app starts and closed when it stops
(``alerts.web.app``'s lifespan); SQLite has no store and the pages take the ORM path.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from psycopg import AsyncConnection, OperationalError
from psycopg_pool import AsyncConnectionPool
from sqlalchemy.engine import make_url

from alerts import linkreads, signups
from alerts.compiled import Statement
from alerts.linkreads import ConfirmView, ManageView, UnsubscribeView
from alerts.models import utcnow


def conninfo(database_url: str) -> str | None:
    """libpq's form of a PostgreSQL URL (with its options, e.g. a test's search_path); None for other databases."""
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        return None
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def application_name() -> str:
    return f"alerts-web-links-{os.getpid()}"


async def _configure(connection: AsyncConnection[Any]) -> None:
    # alerts.db sets the same on the ORM's connections; statements here are short and planned often.
    await connection.set_autocommit(True)
    await connection.execute("SET jit = off")
    # Every statement here finds its rows by primary key, so one generic plan per prepared statement is right.
    # Left to choose, PostgreSQL kept planning the confirm page's `id = ANY($1)` and the one-click's CTEs
    # afresh on every execution (its generic estimate looked costlier): 0.76 -> 0.15 ms and 1.2 -> 0.5 ms per
    # execution, measured from a client (benchmarks/README.md).
    await connection.execute("SET plan_cache_mode = force_generic_plan")


# People's requests (one-click unsubscribes, sign-ups) get a pool of their own, as large as the pages' but
# keeping only one connection open: during a scanner burst every process has a queue of scanner GETs waiting
# for the pages' pool, and a person's one statement would wait behind all of them (benchmarks/README.md,
# --scenario scanner). With 2 connections, a burst of one-clicks queued for them instead (+20% CPU each).

Pool = AsyncConnectionPool[AsyncConnection[Any]]


def _pool(conninfo: str, size: int, name: str, kept: int = 2) -> Pool:
    return AsyncConnectionPool(
        conninfo,
        min_size=min(kept, size),
        max_size=size,
        open=False,
        configure=_configure,
        # Named per process in pg_stat_activity (which web process holds which connection).
        kwargs={"application_name": application_name()},
        # A connection broken while idle (PostgreSQL restarted) is noticed when it is returned, not by a ping
        # before every page: a ping is a round trip per request.
        check=None,
        name=name,
    )


class LinkStore:
    def __init__(self, conninfo: str, size: int) -> None:
        self.pool = _pool(conninfo, size, "link-pages")
        self.people_pool = _pool(conninfo, size, "people", kept=1)

    async def open(self) -> None:
        await self.pool.open(wait=False)
        await self.people_pool.open(wait=False)

    async def close(self) -> None:
        await self.people_pool.close()
        await self.pool.close()

    async def _rows(self, statement: Statement, pool: Pool | None = None, **values: Any) -> list[tuple[Any, ...]]:
        pool = pool or self.pool
        try:
            return await self._run(pool, statement, values)
        except OperationalError:
            # Connections that broke while idle (PostgreSQL restarted): this one is dropped when it comes back,
            # the pool's other idle ones are checked (one round trip each, only now), and the statement runs
            # once more. The reads and the unsubscribe are safe to run twice.
            await pool.check()
            return await self._run(pool, statement, values)

    async def _run(self, pool: Pool, statement: Statement, values: dict[str, Any]) -> list[tuple[Any, ...]]:
        async with pool.connection() as connection:
            cursor = await connection.execute(statement.sql, statement.params(**values), prepare=True)
            return await cursor.fetchall()

    async def unsubscribe(self, subscription_id: int) -> UnsubscribeView | None:
        rows = await self._rows(linkreads.UNSUBSCRIBE_SQL, id=subscription_id)
        return linkreads.unsubscribe_view(rows[0] if rows else None)

    async def confirm(self, subscription_ids: Sequence[int]) -> ConfirmView | None:
        rows = await self._rows(linkreads.CONFIRM_SQL, ids=list(subscription_ids))
        return linkreads.confirm_view(subscription_ids, rows)

    async def manage(self, subscriber_id: int) -> ManageView | None:
        return linkreads.manage_view(await self._rows(linkreads.MANAGE_SQL, id=subscriber_id))

    async def record_signup(self, params: dict[str, Any]) -> int:
        """One ``signup_requests`` row (``alerts.signups.INSERT_PG``): one statement, autocommit."""
        try:
            rows = await self._run(self.people_pool, signups.INSERT_PG, params)
        except OperationalError:
            # Not retried (a connection lost after the INSERT committed would record the sign-up twice): this
            # request fails (500), the pool's other idle connections are checked for the next ones.
            await self.people_pool.check()
            raise
        return int(rows[0][0])

    async def unsubscribe_now(self, subscription_id: int, everything: bool) -> UnsubscribeView | None:
        """End one subscription (or all of its subscriber's), drop what they hold, and read what the answer names:
        one statement, so one round trip and atomic without BEGIN/COMMIT (``alerts.linkreads``)."""
        statement = linkreads.UNSUBSCRIBE_ALL_SQL if everything else linkreads.UNSUBSCRIBE_ONE_SQL
        rows = await self._rows(statement, self.people_pool, id=subscription_id, now=utcnow())
        return linkreads.unsubscribe_view(rows[0] if rows else None)
