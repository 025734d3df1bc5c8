"""The outbox table: side effects written with the state change that causes them, then
claimed, performed and marked done by a dispatcher (queries in ``outbox.sql``).

Invariant: an effect is announced to the dispatcher only after its transaction committed,
so nothing is ever sent for a change that rolled back.
"""

from __future__ import annotations

import functools
import uuid
from typing import Any, Final

import asyncpg

from bgworker.store import bundles, connection, grouping, queries, rows

Q: Final = queries.QUERIES


class Outbox(connection.Connected):
    """The outbox part, and the one writer of effects: the parts whose transactions cause
    effects (requests, recovery, dedupe) are given this object and write through it."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        claim_effects_seconds: float | None = None,
        on_effects: connection.EffectsHook | None = None,
    ) -> None:
        """``claim_effects_seconds``: outbox rows start claimed by this process for that
        long, and ``on_effects`` gets them once their transaction committed (a worker's
        dispatcher performs them at once). Without it they wait for a dispatcher's sweep."""
        super().__init__(pool)
        self.claim_effects_seconds = claim_effects_seconds
        self.on_effects = on_effects

    async def insert_effects(
        self, conn: asyncpg.Connection, request_id: uuid.UUID, items: list[tuple[str, Any]]
    ) -> list[rows.OutboxItem]:
        """Write the effects inside the caller's transaction; returns those this process
        claimed (``claim_effects_seconds``), to hand to :meth:`announce` after the commit."""
        if not items:
            return []
        return await self.insert_effects_of(conn, [(request_id, k, p) for k, p in items])

    async def insert_effects_of(
        self, conn: asyncpg.Connection, items: list[tuple[uuid.UUID, str, Any]]
    ) -> list[rows.OutboxItem]:
        """The same for the effects of several requests (group commit), in one statement.
        A bundle's part that ended here may end its bundle: its email is written with them."""
        ended = [(rid, uuid.UUID(p["bundle_id"])) for rid, k, p in items if k == bundles.PART_ENDED]
        if ended:
            items = [item for item in items if item[1] != bundles.PART_ENDED]
            items += await bundles.finish_effects(conn, ended)
        if not items:
            return []
        # One execution per effect, pipelined: one round trip (see insert_outbox in the SQL).
        seconds = self.claim_effects_seconds
        records = await conn.fetchmany(
            Q["insert_outbox"], [(rid, kind, payload, seconds) for rid, kind, payload in items]
        )
        if self.claim_effects_seconds is None:
            return []
        return [rows.OutboxItem.from_record(r) for r in records]

    def announce(self, claimed: list[rows.OutboxItem]) -> None:
        # Called after the commit only: an effect must never run for a rolled-back change.
        if claimed and self.on_effects is not None:
            self.on_effects(claimed)

    async def claim_outbox_due(self, limit: int, claim_seconds: float) -> list[rows.OutboxItem]:
        records = await self.pool.fetch(Q["claim_outbox_due"], limit, claim_seconds)
        return [rows.OutboxItem.from_record(r) for r in records]

    @functools.cached_property
    def done_group(self) -> grouping.GroupCommit[rows.OutboxItem, None]:
        return grouping.GroupCommit(self._outbox_done_many)

    async def outbox_done(self, item: rows.OutboxItem) -> None:
        """Record an effect as performed; those finishing together share one statement."""
        await self.done_group.submit(item)

    async def _outbox_done_many(self, items: list[rows.OutboxItem]) -> list[None]:
        # Sorted: rows locked in one order whichever calls met in the statement.
        ordered = sorted(items, key=lambda i: (i.request_id, i.kind))
        # One execution per item, pipelined in one round trip and one implicit transaction.
        await self.pool.executemany(Q["outbox_done"], [(i.request_id, i.kind) for i in ordered])
        return [None] * len(items)

    async def outbox_retry(self, item: rows.OutboxItem, error: str, delay_seconds: float) -> None:
        await self.pool.execute(Q["outbox_retry"], item.request_id, item.kind, error, delay_seconds)

    async def outbox_give_up(self, item: rows.OutboxItem, error: str) -> None:
        await self.pool.execute(Q["outbox_give_up"], item.request_id, item.kind, error)


class WritesEffects(connection.Connected):
    """A part of the store whose transactions cause effects (requests, recovery, dedupe):
    it writes them through the one :class:`Outbox` it is given, which alone knows how they
    reach this process's dispatcher."""

    def __init__(self, pool: asyncpg.Pool, effects_to: Outbox) -> None:
        super().__init__(pool)
        self.outbox = effects_to
