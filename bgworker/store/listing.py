"""Requests listed for the admin console (``listing.sql``): by status, searched with
paging, and a request's side effects; a request's overview for ``bgworker status``."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Final

import asyncpg

from bgworker.contract import states
from bgworker.store import queries, rows

Q: Final = queries.QUERIES


@dataclass(frozen=True)
class Search:
    """The console's search filters; None matches anything."""

    id: uuid.UUID | None = None
    requester: str | None = None  # a requester id or email, exactly
    file_type: str | None = None
    status: states.Status | None = None


class Listing:
    """The store's read-only listing part (``Store.listing``)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def requests_by_status(
        self, status: states.Status, limit: int = 100
    ) -> list[dict[str, Any]]:
        """The ``limit`` requests in ``status`` changed last, newest first."""
        rows = await self.pool.fetch(Q["list_requests_by_status"], status.value, limit)
        return [dict(r) for r in rows]

    async def search(
        self, wanted: Search, *, limit: int, offset: int = 0
    ) -> tuple[list[dict[str, Any]], bool]:
        """One page of matching requests, newest change first, and whether more follow."""
        status = wanted.status.value if wanted.status is not None else None
        records = await self.pool.fetch(
            *queries.bind(
                "search_requests",
                request_id=wanted.id,
                requester=wanted.requester,
                file_type=wanted.file_type,
                status=status,
                limit=limit + 1,
                offset=offset,
            )
        )
        return [dict(r) for r in records[:limit]], len(records) > limit

    async def effects(self, request_id: uuid.UUID) -> list[dict[str, Any]]:
        """The request's outbox rows (emails and events), oldest first."""
        return [dict(r) for r in await self.pool.fetch(Q["request_effects"], request_id)]

    async def overview(self, request_id: uuid.UUID) -> rows.Overview | None:
        """The request's row with its link generation, attempts and effects; None when no
        worker has recorded it."""
        record = await self.pool.fetchrow(Q["get_request_for_link"], request_id)
        if record is None:
            return None
        attempts = await self.pool.fetch(Q["list_attempts"], request_id)
        return rows.Overview(
            rows.RequestRow.from_record(record),
            record["link_generation"],
            [dict(a) for a in attempts],
            await self.effects(request_id),  # a given-up webhook too
        )
