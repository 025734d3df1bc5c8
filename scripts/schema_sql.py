"""Write ``bgworker/store/migrations/schema.sql``: today's schema, generated from the migrations.

    python scripts/schema_sql.py            # regenerate the file (make schema-sql)
    python scripts/schema_sql.py --check    # fail when the file is not what the migrations make

The migrations are the truth a database is built from; nobody should have to read nine of
them to know what a table looks like now. So a fresh database gets every migration, then
``pg_dump --schema-only`` describes it, with the lines that change between runs and
versions left out (the dump's version stamp, session ``SET``s). ``make test`` runs
``--check``, so a migration without its regenerated schema fails the suite.

Needs PostgreSQL (``BGWORKER_DATABASE_URL``'s server; the database is made and dropped
here) and its ``pg_dump``.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Final

import asyncpg

from bgworker.store import migrations

SCHEMA: Final = (
    Path(__file__).resolve().parent.parent / "bgworker" / "store" / "migrations" / "schema.sql"
)
SERVER: Final = os.environ.get("BGWORKER_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/x")
HEADER: Final = """\
-- Today's schema of bgworker's PostgreSQL tables, for reading: generated from the migrations
-- beside it by scripts/schema_sql.py (make schema-sql), checked by make test.
-- Never applied: `bgworker migrate` applies the migrations.
"""
# Lines of pg_dump's output that say nothing about the schema, or differ by version.
_NOISE: Final = re.compile(
    r"^(--.*|SET .*|SELECT pg_catalog\.set_config.*|\\(un)?restrict .*)$", re.MULTILINE
)


def _dsn(database: str) -> str:
    return SERVER.rsplit("/", 1)[0] + "/" + database


async def _admin(statement: str) -> None:
    """One statement on the server's ``postgres`` database (CREATE/DROP DATABASE)."""
    admin = await asyncpg.connect(_dsn("postgres"))
    try:
        await admin.execute(statement)
    finally:
        await admin.close()


async def _migrated(database: str) -> None:
    await _admin(f'CREATE DATABASE "{database}"')
    conn = await asyncpg.connect(_dsn(database))
    try:
        await migrations.apply(conn)
    finally:
        await conn.close()


async def _drop(database: str) -> None:
    await _admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def generate() -> str:
    pg_dump = shutil.which("pg_dump")
    if pg_dump is None:
        raise SystemExit("schema_sql: pg_dump is not installed (Debian: postgresql-client)")
    database = f"bgworker_schema_{uuid.uuid4().hex[:12]}"
    asyncio.run(_migrated(database))
    try:
        dump = subprocess.run(
            [pg_dump, "--schema-only", "--no-owner", "--no-privileges", _dsn(database)],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
    finally:
        asyncio.run(_drop(database))
    body = _NOISE.sub("", dump)
    body = re.sub(r"\n{3,}", "\n\n", body).strip()
    return HEADER + "\n" + body + "\n"


def main(argv: list[str]) -> int:
    text = generate()
    if "--check" in argv:
        if not SCHEMA.exists() or SCHEMA.read_text() != text:
            print(f"{SCHEMA} is not what the migrations make: run `make schema-sql`")
            return 1
        print(f"{SCHEMA.name} matches the migrations")
        return 0
    SCHEMA.write_text(text)
    print(f"wrote {SCHEMA}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
