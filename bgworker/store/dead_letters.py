"""The request-row side of dead-letter replay and purge, and the record of every action
(``bgworker_dlq_actions``). Queries in ``dead_letters.sql``.

This module sits below the dead-letter package (``bgworker.ops.deadletters``) and imports
nothing from it: a letter arrives as plain values (``LetterFacts``), and the replay rule as
a callback whose answer only has to say how the row changes (``Verdict``). So the
dependency runs one way, operations above the store.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Final, Protocol, TypeVar

import asyncpg

from bgworker.store import queries

Q: Final = queries.QUERIES


class ActionKind(StrEnum):
    """``bgworker_dlq_actions.action`` (its CHECK constraint is in 0002_dlq.sql)."""

    REPLAY = "replay"
    SKIP = "skip"
    PURGE = "purge"


class RowChange(StrEnum):
    """What a replay does to the request row."""

    REQUEUE = "requeue"  # failed (or never recorded): back to queued
    FORCE = "force"  # any row: back to queued, cancel and lease cleared
    REPUBLISH = "republish"  # queued/retrying: left as it is, the replay counted
    NONE = "none"  # nothing published: only the skip is recorded

    @property
    def publishes(self) -> bool:
        return self is not RowChange.NONE


@dataclass(frozen=True, kw_only=True)
class LetterFacts:
    """What the action record keeps of a dead letter."""

    key: str  # the request id, or the letter's content key
    request_id: uuid.UUID | None = None
    reason: str | None = None
    error_class: str | None = None
    error: str | None = None
    failed_at: datetime | None = None


@dataclass(frozen=True, kw_only=True)
class Action:
    """One row of ``bgworker_dlq_actions``: a replay, a skip or a purge, and what the
    request looked like before it."""

    kind: ActionKind
    letter: LetterFacts
    actor: str
    request_id: uuid.UUID | None
    detail: str = ""
    previous_status: str | None = None
    previous_attempts: int | None = None
    # The attempt rows a replay with reset attempts cleared (jsonb), kept as history.
    attempt_log: list[dict[str, Any]] | None = None

    def insert(self) -> tuple[Any, ...]:
        """``(sql, $1..$12)`` of ``dlq_insert_action``, bound by column name."""
        return queries.bind(
            "dlq_insert_action",
            request_id=self.request_id,
            letter_key=self.letter.key,
            action=self.kind.value,
            actor=self.actor,
            detail=self.detail,
            previous_status=self.previous_status,
            previous_attempts=self.previous_attempts,
            reason=self.letter.reason,
            error_class=self.letter.error_class,
            error=self.letter.error,
            letter_failed_at=self.letter.failed_at,
            attempt_log=self.attempt_log,
        )


@dataclass(frozen=True, kw_only=True)
class RequestState:
    """The locked request row as the replay rule sees it (``status`` None: not recorded)."""

    status: str | None
    attempts: int | None
    cancel_requested: bool
    lease_live: bool  # judged by the database clock
    # A placeholder: cancelled before it arrived, or erased (``rows.RequestRow.body_kept``).
    placeholder: bool = False


class Verdict(Protocol):
    """What the store needs of a replay decision (``deadletters.rule.Decision`` is one)."""

    @property
    def change(self) -> RowChange: ...

    @property
    def why(self) -> str: ...


V = TypeVar("V", bound=Verdict)


class DeadLetterRecords:
    """The store's dead-letter part (``Store.dead_letters``)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def requeue(
        self,
        request_id: uuid.UUID,
        *,
        letter: LetterFacts,
        actor: str,
        keep_attempts: bool,
        decide: Callable[[RequestState], V],
        publish: Callable[[int], Awaitable[None]],
    ) -> tuple[V, int]:
        """Apply the replay rule to one request, as one unit.

        The row is locked and ``decide`` says what to do. When the request is to run again,
        the row is changed (requeue or force: back to ``queued``; republish: left as it is)
        and the replay recorded, then ``publish`` runs inside the transaction: the change
        commits only once the broker has confirmed the message (a refused publish rolls it
        back). Otherwise only the skip is recorded and nothing is published. Returns the
        decision and the replay number (0 when nothing was published).
        """
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(Q["dlq_lock_request"], request_id)
            state = RequestState(
                status=row["status"] if row else None,
                attempts=row["attempts"] if row else None,
                cancel_requested=bool(row and row["cancel_requested"]),
                lease_live=bool(row and row["lease_live"]),
                placeholder=bool(row and row["placeholder"]),
            )
            verdict = decide(state)
            change = verdict.change
            history: list[dict[str, Any]] | None = None
            if change in (RowChange.REQUEUE, RowChange.FORCE):
                forced = change is RowChange.FORCE
                replays = 1
                if row is not None:
                    if not keep_attempts:
                        history = await conn.fetchval(Q["dlq_take_attempts"], request_id)
                    replays = await conn.fetchval(
                        Q["dlq_requeue"], request_id, keep_attempts, forced
                    )
                detail = "attempts kept" if keep_attempts else "attempts reset"
                detail = f"forced: cancel cleared, {detail}" if forced else detail
            elif change is RowChange.REPUBLISH:
                replays = await conn.fetchval(Q["dlq_mark_republished"], request_id)
                detail = f"republished: row left {state.status}"
            else:
                skip = Action(
                    kind=ActionKind.SKIP,
                    letter=letter,
                    actor=actor,
                    request_id=request_id if row else None,
                    detail=verdict.why,
                    previous_status=state.status,
                    previous_attempts=state.attempts,
                )
                await conn.execute(*skip.insert())
                return verdict, 0
            replay = Action(
                kind=ActionKind.REPLAY,
                letter=letter,
                actor=actor,
                request_id=request_id,
                detail=detail,
                previous_status=state.status,
                previous_attempts=state.attempts,
                attempt_log=history,
            )
            await conn.execute(*replay.insert())
            await publish(replays)
        return verdict, replays

    async def record_purge(self, letter: LetterFacts, *, actor: str) -> None:
        """Record a purge, and mark it on the request row when the letter names one."""
        async with self.pool.acquire() as conn, conn.transaction():
            status = None
            if letter.request_id is not None:
                status = await conn.fetchval(Q["dlq_mark_purged"], letter.request_id)
            purge = Action(
                kind=ActionKind.PURGE,
                letter=letter,
                actor=actor,
                request_id=letter.request_id,
                previous_status=status,
            )
            await conn.execute(*purge.insert())

    async def list_actions(self, request_id: uuid.UUID) -> list[dict[str, Any]]:
        """Every replay, skip and purge of one request, oldest first."""
        return [dict(r) for r in await self.pool.fetch(Q["dlq_list_actions"], request_id)]

    async def request_marks(self, request_id: uuid.UUID) -> dict[str, Any]:
        """The dead-letter columns of a request row (replay count, last replay, purge time)."""
        record = await self.pool.fetchrow(Q["dlq_request_marks"], request_id)
        return {} if record is None else dict(record)
