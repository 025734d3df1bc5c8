"""The asyncpg pool every part of the store shares, and the database it connects to."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Final, Literal
from urllib.parse import unquote, urlsplit

import asyncpg

from bgworker.observe import logs
from bgworker.store import queries, rows

Q: Final = queries.QUERIES
# Failures that mean "the database is away for now": retry later, never crash. asyncpg
# raises InternalClientError too when a connection dies mid-operation (server restart).
TRANSIENT_ERRORS: Final = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)
PostgresError: Final = asyncpg.PostgresError


# What the database URL points at (settings.database_pooler): PostgreSQL itself (or a
# session-mode pooler), or a pooler in transaction mode.
Pooler = Literal["none", "transaction"]


def connect_options(pooler: Pooler) -> dict[str, Any]:
    """asyncpg's keyword arguments for ``pooler``. A transaction-mode pooler runs each
    transaction on whichever server connection is free, so a named statement asyncpg
    prepared and cached on one is missing on the next (``prepared statement
    "__asyncpg_stmt_N__" does not exist``). Without a cache asyncpg prepares an unnamed
    statement and runs it in one exchange (Parse, Describe, Flush, then Bind, Execute,
    Sync: no transaction ends in between, so one server connection sees it all)."""
    return {"statement_cache_size": 0} if pooler == "transaction" else {}


async def connect(
    dsn: str, *, pooler: Pooler = "none", timeout: float | None = None
) -> asyncpg.Connection:
    """One connection outside a pool (the lease keeper, ``migrate``)."""
    if timeout is None:
        return await asyncpg.connect(dsn, **connect_options(pooler))
    return await asyncpg.connect(dsn, timeout=timeout, **connect_options(pooler))


async def transaction_pooled(dsn: str, *, timeout: float = 5.0) -> bool:
    """Whether ``dsn`` reaches a pooler in transaction (or statement) mode: the server
    process behind one connection changes between two statements while another connection
    holds a transaction open on the one it had. On PostgreSQL itself, or a session-mode
    pooler, a connection keeps its server process. PgBouncer hands the most recently
    released server connection out next, so the second connection's transaction takes the
    first one's. False also when it cannot tell (the pooler handed out another, or a
    statement waited past ``timeout``: a pool of one server connection)."""
    opened: list[asyncpg.Connection] = []
    try:
        async with asyncio.timeout(timeout):
            for _ in range(2):
                opened.append(await asyncpg.connect(dsn, statement_cache_size=0))
            first, second = opened
            before = await first.fetchval(Q["backend_pid"])
            async with second.transaction():
                await second.fetchval(Q["backend_pid"])
                after = await first.fetchval(Q["backend_pid"])
    except TimeoutError:
        # terminate, not close: a connection whose statement waits for a server would
        # wait in close too.
        for conn in opened:
            conn.terminate()
        return False
    except BaseException:
        for conn in opened:
            conn.terminate()
        raise
    for conn in opened:
        await conn.close()
    return bool(before != after)


async def _init_connection(conn: asyncpg.Connection) -> None:
    # A new connection: PostgreSQL answers (again), if it had been lost (faults.report).
    logs.OUTAGES[logs.POSTGRESQL].back()
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _no_reset(conn: asyncpg.Connection) -> None:
    # asyncpg's default reset runs a round trip (RESET ALL, UNLISTEN, ...) on every release.
    # bgworker keeps no session state (only transaction-scoped locks), so skip it.
    return None


async def create_pool(
    dsn: str, *, min_size: int = 1, max_size: int = 10, pooler: Pooler = "none"
) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        reset=_no_reset,
        **connect_options(pooler),
    )
    assert pool is not None
    return pool


async def ensure_database(dsn: str, *, pooler: Pooler = "none") -> bool:
    """Create the database named in ``dsn`` if it is missing; True when it was created."""
    try:
        conn = await connect(dsn, pooler=pooler)
    except asyncpg.InvalidCatalogNameError:
        pass
    else:
        await conn.close()
        return False
    name = unquote(urlsplit(dsn).path.lstrip("/"))
    if not name:
        raise ValueError("the database URL names no database")
    admin = await asyncpg.connect(dsn, database="postgres", **connect_options(pooler))
    try:
        # An identifier cannot be a parameter: PostgreSQL quotes it (format's %I). Double
        # quotes were always dropped from the name; they still are.
        statement = await admin.fetchval(Q["create_database_statement"], name.replace('"', ""))
        await admin.execute(statement)
    except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
        # Two `migrate` runs racing on a new database: the loser's CREATE DATABASE fails on
        # pg_database's unique name index (UniqueViolation) rather than with
        # DuplicateDatabase when both passed the existence check at the same instant.
        return False
    finally:
        await admin.close()
    return True


EffectsHook = Callable[[list[rows.OutboxItem]], None]


class Connected:
    """What each part of the store works on: the pool, and transactions from it."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        async with self.pool.acquire() as conn, conn.transaction():
            yield conn
