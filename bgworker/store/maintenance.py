"""Liveness, counts, and the expiry ``bgworker clean`` runs (queries in ``maintenance.sql``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from bgworker.store import connection, queries, rows

Q: Final = queries.QUERIES


class Maintenance(connection.Connected):
    async def ping(self) -> None:
        """One round trip to the database; raises when it cannot be reached (health checks
        bound it with their own timeout)."""
        await self.pool.fetchval(Q["ping"])

    async def count_by_status(self) -> dict[str, int]:
        return {r["status"]: r["n"] for r in await self.pool.fetch(Q["count_by_status"])}

    async def expirable_keys(self, leeway_seconds: float) -> list[str | None]:
        """The storage keys of the ready requests past their expiry plus ``leeway_seconds`` (what a
        clean would expire; None: no file)."""
        records = await self.pool.fetch(Q["expirable_keys"], leeway_seconds)
        return [r["storage_key"] for r in records]

    async def expire_ready(self, leeway_seconds: float, limit: int) -> list[rows.ExpiredFile]:
        """Mark up to ``limit`` such requests expired, in the statement that returns their
        files: once it commits, no download can start on them."""
        records = await self.pool.fetch(Q["expire_ready"], leeway_seconds, limit)
        return [rows.ExpiredFile(r["id"], r["storage_key"]) for r in records]

    async def referenced_keys(self, keys: Sequence[str]) -> set[str]:
        """Those of ``keys`` some request row points to."""
        records = await self.pool.fetch(Q["referenced_keys"], list(keys))
        return {r["storage_key"] for r in records}
