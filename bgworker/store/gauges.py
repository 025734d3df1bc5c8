"""What the worker's gauges sample from PostgreSQL (queries in ``gauges.sql``); requests by
status come from ``Maintenance.count_by_status``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from bgworker.store import connection, queries

Q: Final = queries.QUERIES


@dataclass(frozen=True)
class OutboxBacklog:
    kind: str
    pending: int
    oldest_seconds: float  # age of the oldest pending effect of this kind


class Gauges(connection.Connected):
    async def outbox_backlog(self) -> list[OutboxBacklog]:
        """Pending effects by kind (kinds with none are absent)."""
        records = await self.pool.fetch(Q["outbox_backlog"])
        return [
            OutboxBacklog(r["kind"], r["pending"], max(0.0, r["oldest_seconds"])) for r in records
        ]
