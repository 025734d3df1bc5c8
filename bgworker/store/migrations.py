"""Numbered SQL migrations: applied in order, recorded, safe to run from two processes.

A database records each applied version (``bgworker_migrations``) and gets every file whose
version it lacks, in order. The numbers need not be consecutive: no file ever had 0009 or
0010 (0011 was numbered during issue 14 while other work of that round could still have
needed them; none did). A skipped number stays unused for good (SKIPPED): a database that
recorded 0011 would apply a new 0009 after 0011, in another order than a fresh database, so
``available`` refuses such a file. A new migration takes the next number after the highest.

The bookkeeping queries are in ``migrations.sql`` like every other query: a query file is
parsed at import and needs no table, so it can serve the code that creates the tables."""

from __future__ import annotations

import argparse
import logging
import re
from dataclasses import dataclass
from importlib import resources
from typing import Final

import asyncpg

from bgworker import settings as settings_mod
from bgworker.store import connection, queries

Q: Final = queries.QUERIES
log = logging.getLogger(__name__)

_FILE_RE: Final = re.compile(r"^(\d{4})_(\w+)\.sql$")
# Any constant works: it only has to be the same in every process running migrations.
_LOCK_KEY: Final = 0x6267776B  # "bgwk"
# Numbers never used, and never to be: see the module's docstring.
SKIPPED: Final = frozenset({9, 10})


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
    if reused := SKIPPED.intersection(versions):
        raise RuntimeError(
            f"migration numbers {sorted(reused)} were skipped for good (databases past them "
            "would apply them out of order): take the next number after the highest"
        )
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
            # DEBUG: `bgworker migrate` prints each one it applied, once.
            log.debug("applying migration %04d_%s", migration.version, migration.name)
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


async def run(settings: settings_mod.Settings, args: argparse.Namespace) -> int:
    """``bgworker migrate``: create the database if missing, apply what is missing, and say
    each once."""
    dsn, pooler = settings.database_url.get_secret_value(), settings.database_pooler
    if await connection.ensure_database(dsn, pooler=pooler):
        print(f"created database {dsn.rsplit('/', 1)[-1]}")
    conn = await connection.connect(dsn, pooler=pooler)
    try:
        applied = await apply(conn)
    finally:
        await conn.close()
    for m in applied:
        print(f"applied {m.version:04d}_{m.name}")
    if not applied:
        print("database is up to date")
    return 0
