"""Numbered SQL migrations: applied in order, recorded, safe to run from two processes.

The bookkeeping queries are in ``migrations.sql`` like every other query: a query file is
parsed at import and needs no table, so it can serve the code that creates the tables."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources
from typing import Final

import asyncpg

from bgworker.store import queries

Q: Final = queries.QUERIES
log = logging.getLogger(__name__)

_FILE_RE: Final = re.compile(r"^(\d{4})_(\w+)\.sql$")
# Any constant works: it only has to be the same in every process running migrations.
_LOCK_KEY: Final = 0x6267776B  # "bgwk"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available() -> list[Migration]:
    folder = resources.files("bgworker.store").joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        match = _FILE_RE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text()))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration numbers in {versions}")
    return found


async def apply(conn: asyncpg.Connection) -> list[Migration]:
    """Apply what is missing; returns the migrations applied by this call."""
    applied: list[Migration] = []
    async with conn.transaction():
        # A transaction-scoped advisory lock serialises concurrent `migrate` runs: the second
        # waits, then sees the first one's rows and has nothing left to do.
        await conn.execute(Q["migration_lock"], _LOCK_KEY)
        await conn.execute(Q["create_migration_table"])
        done = {r["version"] for r in await conn.fetch(Q["applied_migrations"])}
        for migration in available():
            if migration.version in done:
                continue
            log.info("applying migration %04d_%s", migration.version, migration.name)
            await conn.execute(migration.sql)
            await conn.execute(Q["record_migration"], migration.version, migration.name)
            applied.append(migration)
    return applied


async def pending(conn: asyncpg.Connection) -> list[Migration]:
    exists = await conn.fetchval(Q["migration_table_exists"])
    done: set[int] = set()
    if exists:
        done = {r["version"] for r in await conn.fetch(Q["applied_migrations"])}
    return [m for m in available() if m.version not in done]
