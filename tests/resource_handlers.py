"""A registry with a lifespan (``tests.resource_handlers:registry``): a real asyncpg pool
on the worker's database, opened once per worker process and closed on its exit. Loaded
only by the tests that add it to ``settings.handlers``."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, fields
from typing import Any

import asyncpg

from bgworker import handlers, storage
from bgworker import settings as settings_mod


@dataclass
class PoolLog:
    """What the lifespan and the handlers saw, for the tests to check."""

    opened: list[Any] = field(default_factory=list)  # the pools, in opening order
    closed: list[Any] = field(default_factory=list)
    closed_at: list[float] = field(default_factory=list)  # time.monotonic()
    pools_used: dict[str, Any] = field(default_factory=dict)  # request id -> pool it got
    finished_at: dict[str, float] = field(default_factory=dict)
    # Progress the "counted" handler reported: request id -> time.monotonic().
    reported_at: dict[str, float] = field(default_factory=dict)
    release: set[str] = field(default_factory=set)  # request ids "counted" may finish


LOG = PoolLog()

registry = handlers.Registry()


@registry.lifespan
async def database(settings: settings_mod.Settings) -> AsyncIterator[dict[str, Any]]:
    pool = await asyncpg.create_pool(
        settings.database_url.get_secret_value(), min_size=1, max_size=2
    )
    LOG.opened.append(pool)
    try:
        yield {"pool": pool}
    finally:
        await pool.close()
        LOG.closed.append(pool)
        LOG.closed_at.append(time.monotonic())


# The query the handler builds its file from, and what a test expects from it.
SQUARES = "SELECT n, n * n AS square, md5(n::text) AS digest FROM generate_series(1, $1) AS n"


def squares_csv(rows: int) -> bytes:
    lines = ["n,square,digest\n"]
    lines += [
        f"{n},{n * n},{hashlib.md5(str(n).encode()).hexdigest()}\n" for n in range(1, rows + 1)
    ]
    return "".join(lines).encode()


@registry.handler("squares", extension="csv", content_type="text/csv; charset=utf-8")
async def squares(ctx: handlers.JobContext, out: storage.FileWriter) -> None:
    """A CSV from a query on the lifespan's pool; ``delay`` seconds of waiting first."""
    rows = int(ctx.criteria.get("rows", 10))  # type: ignore[arg-type]
    delay = float(ctx.criteria.get("delay", 0))  # type: ignore[arg-type]
    pool = ctx.resource("pool", asyncpg.Pool)
    LOG.pools_used[str(ctx.id)] = pool
    if delay:
        await asyncio.sleep(delay)
    await out.write(b"n,square,digest\n")
    async with pool.acquire() as conn, conn.transaction():
        done = 0
        async for record in conn.cursor(SQUARES, rows):
            await out.write(f"{record['n']},{record['square']},{record['digest']}\n".encode())
            done += 1
            ctx.progress(done, rows)
    LOG.finished_at[str(ctx.id)] = time.monotonic()


@registry.handler("counted")
async def counted(ctx: handlers.JobContext, out: storage.FileWriter) -> None:
    """Reports 3 of 8, then waits (checking for a stop) until the test releases it."""
    ctx.progress(3, 8)
    LOG.reported_at[str(ctx.id)] = time.monotonic()
    while str(ctx.id) not in LOG.release:
        await ctx.check()
        await asyncio.sleep(0.02)
    ctx.progress(8, 8)
    await out.write(b"done\n")


def reset() -> None:
    for f in fields(LOG):
        getattr(LOG, f.name).clear()
