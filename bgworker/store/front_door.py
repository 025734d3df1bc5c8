"""The HTTP front door's record of the events it accepted (``front_door.sql``, table from
migration 0011): ``POST /requests`` is idempotent on the event's id before any worker has
recorded the request, and publishes one body per id however many POSTs race."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import asyncpg

from bgworker.store import queries

Q: Final = queries.QUERIES


@dataclass(frozen=True)
class Reserved:
    """The event recorded under an id, and whether RabbitMQ has confirmed it yet."""

    event: dict[str, Any]
    published_at: datetime | None
    # True for the POST that inserted the row (the first one of this id).
    first: bool


class FrontDoor:
    """The store's front-door part (``Store.front_door``)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def reserve(self, request_id: uuid.UUID, event: dict[str, Any]) -> Reserved:
        """Record ``event`` under its id unless one is recorded already; either way, the
        recorded one."""
        inserted = await self.pool.fetchval(Q["front_door_reserve"], request_id, event)
        if inserted is not None:
            return Reserved(event=event, published_at=None, first=True)
        row = await self.pool.fetchrow(Q["front_door_get"], request_id)
        # Rows are never deleted, so the conflicting one is still there.
        assert row is not None, f"front door row {request_id} vanished"
        return Reserved(event=dict(row["event"]), published_at=row["published_at"], first=False)

    async def mark_published(self, request_id: uuid.UUID) -> None:
        await self.pool.execute(Q["front_door_published"], request_id)
