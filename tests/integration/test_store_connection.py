"""The store's reach to the database: ``Store.maintenance.ping`` and ``ensure_database``."""

from __future__ import annotations

import uuid
from urllib.parse import quote

import asyncpg
import pytest

from bgworker import store
from tests.helpers import PG_ADMIN, db_url, drop_database


async def test_ping_answers_while_the_database_is_there(db: store.Store) -> None:
    await db.maintenance.ping()


async def test_ping_raises_a_transient_error_when_the_pool_is_gone(database_url: str) -> None:
    pool = await store.create_pool(database_url)
    await pool.close()
    with pytest.raises(store.TRANSIENT_ERRORS):
        await store.Store(pool).maintenance.ping()


@pytest.mark.parametrize(
    "suffix",
    [
        "plain",
        "MixedCase",
        "with space",
        "quote'; DROP DATABASE postgres; --",
        "per%cent?and#hash/slash",
    ],
)
async def test_ensure_database_creates_exactly_the_named_database_once(suffix: str) -> None:
    # The name comes from the operator's database URL: whatever it holds (bar the double
    # quotes bgworker always dropped), it names one database and is never read as SQL.
    name = f"bgw_e_{uuid.uuid4().hex[:8]} {suffix}"
    dsn = db_url(quote(name, safe=""))
    try:
        assert await store.ensure_database(dsn) is True
        assert await store.ensure_database(dsn) is False
        admin = await asyncpg.connect(PG_ADMIN)
        try:
            found = await admin.fetch(
                "SELECT datname FROM pg_database WHERE datname LIKE $1", name[:14] + "%"
            )
            assert [r["datname"] for r in found] == [name]
            assert await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = 'postgres'")
        finally:
            await admin.close()
        conn = await asyncpg.connect(dsn)
        await conn.close()
    finally:
        await drop_database(name)
