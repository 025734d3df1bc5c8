"""The outbox table: side effects written with the state change that causes them, then
claimed, performed and marked done by a dispatcher (queries in ``outbox.sql``).

Invariant: an effect is announced to the dispatcher only after its transaction committed,
so nothing is ever sent for a change that rolled back.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from typing import Any, Final

import asyncpg

from bgworker.store import connection, queries, rows

Q: Final = queries.QUERIES


class GroupCommit:
    """``outbox_done`` for effects that finish together, in one statement (group commit).

    The first caller flushes: it runs the UPDATE for everything waiting, then again for what
    arrived meanwhile, until nothing waits. Others only wait for the flush that carries
    theirs. Each caller learns its own outcome: all of one statement's callers fail or
    succeed together, as their rows do. A flush interrupted (its caller cancelled) fails
    the ones still waiting, who retry (``Dispatcher._record_done`` retries any error)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._waiting: list[tuple[uuid.UUID, str, asyncio.Future[None]]] = []
        self._flushing = False
        self.statements = 0  # for tests and the bench: how many UPDATEs carried the items

    async def done(self, request_id: uuid.UUID, kind: str) -> None:
        mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((request_id, kind, mine))
        if not self._flushing:
            self._flushing = True
            try:
                while self._waiting:
                    await self._flush()
            finally:
                self._flushing = False
                interrupted, self._waiting = self._waiting, []
                for *_, waiting in interrupted:
                    if not waiting.done():
                        waiting.set_exception(ConnectionError("outbox_done flush interrupted"))
                if mine.done() and not mine.cancelled():
                    mine.exception()  # read: a cancelled flusher raises its cancellation
        await mine

    async def _flush(self) -> None:
        # Sorted: two flushes that share rows (never expected) would lock them in one order.
        batch = sorted(self._waiting, key=lambda w: (w[0], w[1]))
        self._waiting = []
        try:
            await self._pool.execute(
                Q["outbox_done"], [rid for rid, _, _ in batch], [kind for _, kind, _ in batch]
            )
        except BaseException as exc:
            error = exc if isinstance(exc, Exception) else ConnectionError("flush interrupted")
            for *_, waiting in batch:
                if not waiting.done():
                    waiting.set_exception(error)
            if not isinstance(exc, Exception):
                raise
            return
        self.statements += 1
        for *_, waiting in batch:
            if not waiting.done():
                waiting.set_result(None)


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

    @functools.cached_property
    def done_group(self) -> GroupCommit:
        return GroupCommit(self.pool)

    async def outbox_done(self, item: rows.OutboxItem) -> None:
        """Record an effect as performed; those finishing together share one statement."""
        await self.done_group.done(item.request_id, item.kind)

    async def outbox_retry(self, item: rows.OutboxItem, error: str, delay_seconds: float) -> None:
        await self.pool.execute(Q["outbox_retry"], item.request_id, item.kind, error, delay_seconds)

    async def list_outbox(self, request_id: uuid.UUID) -> list[dict[str, Any]]:
        return [dict(r) for r in await self.pool.fetch(Q["list_outbox"], request_id)]
