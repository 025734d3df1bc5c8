"""The producer outbox (``producer_outbox.sql``; ``Store.producer_outbox``): a producer
inserts its ``FileRequested`` in the same transaction as its own change, and the relay
(``ops.relay``) publishes what was committed. A rolled-back transaction leaves no row, so
nothing is published; a committed one is published by the relay whatever happens to the
producer after its commit."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Final

import asyncpg

from bgworker.store import queries

Q: Final = queries.QUERIES
# The same INSERT in DB-API form (%s placeholders: psycopg, Django's cursors), for
# producers that do not use asyncpg.
DBAPI_INSERT: Final = Q["producer_outbox_enqueue"].replace("$1", "%s").replace("$2", "%s")


class ProducerOutbox:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def create_table(self) -> None:
        await self.pool.execute(Q["producer_outbox_create"])

    async def relay_batch(
        self, limit: int, publish: Callable[[uuid.UUID, dict[str, Any]], Awaitable[None]]
    ) -> int:
        """Publish up to ``limit`` committed events, each confirmed by the broker, and mark
        them in the transaction that locked them: a relay that dies before its commit
        leaves them unmarked, and they are published again (a duplicate the worker drops by
        id). How many were published."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(Q["producer_outbox_take"], limit)
            for row in rows:
                await publish(row["request_id"], row["event"])
            if rows:
                await conn.execute(Q["producer_outbox_published"], [r["request_id"] for r in rows])
        return len(rows)


async def enqueue(conn: asyncpg.Connection, request_id: uuid.UUID, event_json: str) -> None:
    """Insert an event (its JSON text) on ``conn``, inside the producer's own transaction."""
    await conn.execute(Q["producer_outbox_enqueue"], request_id, event_json)
