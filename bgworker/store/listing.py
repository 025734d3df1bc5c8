"""Requests listed by status, for the admin console's requests page (``listing.sql``)."""

from __future__ import annotations

from typing import Any, Final

import asyncpg

from bgworker import states
from bgworker.store import queries

Q: Final = queries.QUERIES


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
