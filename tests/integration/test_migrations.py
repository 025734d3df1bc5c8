"""Migrations: idempotent, and safe when two processes run them at once."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from bgworker.store import migrations
from tests.helpers import create_database, db_url, drop_database, wait_until


@pytest.fixture
async def empty_database_url() -> AsyncIterator[str]:
    """A brand-new database with nothing in it (not cloned from the migrated template)."""
    name = f"bgw_m_{uuid.uuid4().hex[:12]}"
    await create_database(name)
    yield db_url(name)
    await drop_database(name)


async def _tables(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE 'bgworker%'"
    )
    return {r["tablename"] for r in rows}


async def test_available_migrations_are_numbered_in_order() -> None:
    found = migrations.available()
    assert found, "no migrations packaged"
    assert [m.version for m in found] == sorted({m.version for m in found})
    assert found[0].version == 1 and found[0].sql.strip()


async def test_apply_twice_applies_once(empty_database_url: str) -> None:
    conn = await asyncpg.connect(empty_database_url)
    try:
        assert await _tables(conn) == set()
        assert [m.version for m in await migrations.pending(conn)] == [
            m.version for m in migrations.available()
        ]
        first = await migrations.apply(conn)
        assert [m.version for m in first] == [m.version for m in migrations.available()]
        assert {"bgworker_requests", "bgworker_attempts", "bgworker_outbox"} <= await _tables(conn)
        assert await migrations.pending(conn) == []

        second = await migrations.apply(conn)
        assert second == []
        recorded = await conn.fetch("SELECT version FROM bgworker_migrations ORDER BY version")
        assert [r["version"] for r in recorded] == [m.version for m in migrations.available()]
    finally:
        await conn.close()


async def test_concurrent_apply_on_a_fresh_database(empty_database_url: str) -> None:
    a = await asyncpg.connect(empty_database_url)
    b = await asyncpg.connect(empty_database_url)
    try:
        # Hold the migration lock on a third connection so both runs are waiting at once,
        # then let them race for it.
        holder = await asyncpg.connect(empty_database_url)
        tx = holder.transaction()
        await tx.start()
        await holder.execute("SELECT pg_advisory_xact_lock($1)", migrations._LOCK_KEY)
        runs = [asyncio.create_task(migrations.apply(conn)) for conn in (a, b)]

        async def both_waiting() -> bool:
            n = await holder.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
            return bool(n == 2)

        await wait_until(both_waiting)
        await tx.rollback()
        await holder.close()
        results = await asyncio.wait_for(asyncio.gather(*runs), 60)

        applied = sorted((len(r) for r in results), reverse=True)
        assert applied == [len(migrations.available()), 0]  # one did the work, the other none
        count = await a.fetchval("SELECT count(*) FROM bgworker_migrations")
        assert count == len(migrations.available())
        assert "bgworker_requests" in await _tables(b)
    finally:
        await a.close()
        await b.close()


async def test_concurrent_apply_without_coordination(empty_database_url: str) -> None:
    """Plain race, no lock held up front: both calls succeed, each migration applies once."""
    conns = [await asyncpg.connect(empty_database_url) for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrations.apply(c) for c in conns))
        assert sum(len(r) for r in results) == len(migrations.available())
        assert await migrations.pending(conns[0]) == []
    finally:
        for c in conns:
            await c.close()


async def test_eight_concurrent_migrate_commands_create_and_migrate_a_new_database() -> None:
    """`bgworker migrate` from eight processes at once on a database that does not exist yet:
    every one exits 0 (the losers of CREATE DATABASE used to exit 69 on UniqueViolation)."""
    name = f"bgw_mc_{uuid.uuid4().hex[:12]}"
    env = {**os.environ, "BGWORKER_DATABASE_URL": db_url(name)}
    try:
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bgworker",
                "migrate",
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            for _ in range(8)
        ]
        outputs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), 120)
        codes = [p.returncode for p in procs]
        assert codes == [0] * 8, [err.decode()[-500:] for _, err in outputs]
        created = [out for out, _ in outputs if b"created database" in out]
        assert len(created) == 1
        conn = await asyncpg.connect(db_url(name))
        try:
            assert await migrations.pending(conn) == []
        finally:
            await conn.close()
    finally:
        await drop_database(name)
