"""The asyncpg pool every part of the store shares, and the database it connects to."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Final
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


async def _init_connection(conn: asyncpg.Connection) -> None:
    # A new connection: PostgreSQL answers (again), if it had been lost (faults.report).
    logs.OUTAGES[logs.POSTGRESQL].back()
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _no_reset(conn: asyncpg.Connection) -> None:
    # asyncpg's default reset runs a round trip (RESET ALL, UNLISTEN, ...) on every release.
    # bgworker keeps no session state (only transaction-scoped locks), so skip it.
    return None


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init_connection, reset=_no_reset
    )
    assert pool is not None
    return pool


async def ensure_database(dsn: str) -> bool:
    """Create the database named in ``dsn`` if it is missing; True when it was created."""
    try:
        conn = await asyncpg.connect(dsn)
    except asyncpg.InvalidCatalogNameError:
        pass
    else:
        await conn.close()
        return False
    name = unquote(urlsplit(dsn).path.lstrip("/"))
    if not name:
        raise ValueError("the database URL names no database")
    admin = await asyncpg.connect(dsn, database="postgres")
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
