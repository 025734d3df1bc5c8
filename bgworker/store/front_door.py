"""The HTTP front door's record of the events it accepted (``front_door.sql``, table from
migration 0011): ``POST /requests`` is idempotent on the event's id before any worker has
recorded the request, and publishes one body once per id however many POSTs race."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import asyncpg

from bgworker.store import queries

Q: Final = queries.QUERIES


class VanishedError(Exception):
    """The record of an id went while a POST used it: ``bgworker clean`` drops the records
    of requests a worker has recorded. The POST decides again (the row now answers)."""


@dataclass(frozen=True)
class Reserved:
    """The event recorded under an id, and whether RabbitMQ has confirmed it yet."""

    event: dict[str, Any]
    published_at: datetime | None


class FrontDoor:
    """The store's front-door part (``Store.front_door``)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def reserve(
        self, request_id: uuid.UUID, event: dict[str, Any], tenant: str = ""
    ) -> Reserved:
        """Record ``event`` (of ``tenant``, for quotas) under its id unless one is recorded
        already; either way, the recorded one."""
        inserted = await self.pool.fetchval(Q["front_door_reserve"], request_id, event, tenant)
        if inserted is not None:
            return Reserved(event=event, published_at=None)
        row = await self.pool.fetchrow(Q["front_door_get"], request_id)
        if row is None:  # `bgworker clean` dropped it between the two statements
            raise VanishedError(request_id)
        return Reserved(event=dict(row["event"]), published_at=row["published_at"])

    async def known(self, request_id: uuid.UUID) -> bool:
        """Whether an event is recorded under this id (a repeated POST: no quota counts it)."""
        return await self.pool.fetchrow(Q["front_door_get"], request_id) is not None

    async def prune(
        self, supersedable: Iterable[str], unpublished_age_seconds: float, *, dry_run: bool
    ) -> int:
        """Delete the records no POST needs any more (see ``front_door_prune``); how many."""
        reasons = sorted(supersedable)
        found = await self.pool.fetchval(
            Q["front_door_prune"], reasons, unpublished_age_seconds, dry_run
        )
        return int(found)

    @asynccontextmanager
    async def publishing(self, request_id: uuid.UUID) -> AsyncIterator[Publishing]:
        """The recorded event under a row lock, for the one POST that publishes it: racing
        POSTs of the same id wait, then find it published. The lock is held across the
        publish (bounded by its timeout), one pool connection each."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(Q["front_door_lock"], request_id)
            if row is None:  # dropped by `bgworker clean` since it was reserved
                raise VanishedError(request_id)
            yield Publishing(conn, request_id, dict(row["event"]), row["published_at"])


class Publishing:
    """A locked front-door row (``FrontDoor.publishing``)."""

    def __init__(
        self,
        conn: asyncpg.Connection,
        request_id: uuid.UUID,
        event: dict[str, Any],
        published_at: datetime | None,
    ) -> None:
        self._conn = conn
        self._id = request_id
        self.event = event
        self.published_at = published_at

    async def mark_published(self) -> None:
        """Recorded with the lock's transaction: committed as the lock is released."""
        await self._conn.execute(Q["front_door_published"], self._id)
