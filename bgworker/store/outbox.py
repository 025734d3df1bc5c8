"""The outbox table: side effects written with the state change that causes them, then
claimed, performed and marked done by a dispatcher (queries in ``outbox.sql``).

Invariant: an effect is announced to the dispatcher only after its transaction committed,
so nothing is ever sent for a change that rolled back.
"""

from __future__ import annotations

import uuid
from typing import Any, Final

import asyncpg

from bgworker.store import connection, queries, rows

Q: Final = queries.QUERIES


class Outbox(connection.Connected):
    async def _insert_effects(
        self, conn: asyncpg.Connection, request_id: uuid.UUID, items: list[tuple[str, Any]]
    ) -> list[rows.OutboxItem]:
        """Write the effects inside the caller's transaction; returns those this process
        claimed (``claim_effects_seconds``), to hand to :meth:`_announce` after the commit."""
        if not items:
            return []
        records = await conn.fetch(
            Q["insert_outbox"],
            request_id,
            [kind for kind, _ in items],
            [payload for _, payload in items],
            self.claim_effects_seconds,
        )
        if self.claim_effects_seconds is None:
            return []
        return [rows.OutboxItem.from_record(r) for r in records]

    def _announce(self, claimed: list[rows.OutboxItem]) -> None:
        # Called after the commit only: an effect must never run for a rolled-back change.
        if claimed and self.on_effects is not None:
            self.on_effects(claimed)

    async def claim_outbox_due(self, limit: int, claim_seconds: float) -> list[rows.OutboxItem]:
        records = await self.pool.fetch(Q["claim_outbox_due"], limit, claim_seconds)
        return [rows.OutboxItem.from_record(r) for r in records]

    async def outbox_done(self, item: rows.OutboxItem) -> None:
        await self.pool.execute(Q["outbox_done"], item.request_id, item.kind)

    async def outbox_retry(self, item: rows.OutboxItem, error: str, delay_seconds: float) -> None:
        await self.pool.execute(Q["outbox_retry"], item.request_id, item.kind, error, delay_seconds)

    async def outbox_give_up(self, item: rows.OutboxItem, error: str) -> None:
        await self.pool.execute(Q["outbox_give_up"], item.request_id, item.kind, error)

    async def list_outbox(self, request_id: uuid.UUID) -> list[dict[str, Any]]:
        return [dict(r) for r in await self.pool.fetch(Q["list_outbox"], request_id)]
