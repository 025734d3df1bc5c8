"""Request-row side of dead-letter replay and purge (queries in ``queries.sql``, ``dlq_*``)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from bgworker.store import Q, Store

if TYPE_CHECKING:
    from bgworker.dlq import Letter

Verdict = Callable[[str | None], "tuple[str, bool] | None"]


def _letter_args(letter: Letter) -> tuple[Any, ...]:
    return (letter.reason, letter.error_class, letter.error, letter.last_death)


async def requeue(
    db: Store,
    request_id: uuid.UUID,
    *,
    letter: Letter,
    actor: str,
    keep_attempts: bool,
    verdict: Verdict,
    publish: Callable[[int], Awaitable[None]],
) -> tuple[str | None, int]:
    """Put a failed request back to ``queued`` and republish it, as one unit.

    The row is locked, changed and recorded, then ``publish`` runs inside the transaction:
    the change commits only once the broker has confirmed the message (a refused publish
    rolls it back). Returns (status before, replay number); when ``verdict`` says the
    request is not to be replayed, only the skip is recorded and nothing is published.
    """
    async with db.transaction() as conn:
        row = await conn.fetchrow(Q["dlq_lock_request"], request_id)
        status: str | None = row["status"] if row else None
        attempts: int | None = row["attempts"] if row else None
        skip = verdict(status)
        if skip is not None:
            await conn.execute(
                Q["dlq_insert_action"],
                request_id if row else None,
                letter.key,
                "skip",
                actor,
                skip[0],
                status,
                attempts,
                *_letter_args(letter),
                None,
            )
            return status, 0
        history = None
        replays = 1
        if row is not None:
            if not keep_attempts:
                history = await conn.fetchval(Q["dlq_take_attempts"], request_id)
            replays = await conn.fetchval(Q["dlq_requeue"], request_id, keep_attempts)
        await conn.execute(
            Q["dlq_insert_action"],
            request_id,
            letter.key,
            "replay",
            actor,
            "attempts kept" if keep_attempts else "attempts reset",
            status,
            attempts,
            *_letter_args(letter),
            history,
        )
        await publish(replays)
    return status, replays


async def record_purge(db: Store, letter: Letter, *, actor: str) -> None:
    async with db.transaction() as conn:
        status = None
        if letter.request_id is not None:
            status = await conn.fetchval(Q["dlq_mark_purged"], letter.request_id)
        await conn.execute(
            Q["dlq_insert_action"],
            letter.request_id,
            letter.key,
            "purge",
            actor,
            "",
            status,
            None,
            *_letter_args(letter),
            None,
        )


async def list_actions(db: Store, request_id: uuid.UUID) -> list[dict[str, Any]]:
    return [dict(r) for r in await db.pool.fetch(Q["dlq_list_actions"], request_id)]


async def list_requests(db: Store, status: str, limit: int = 100) -> list[dict[str, Any]]:
    return [dict(r) for r in await db.pool.fetch(Q["list_requests_by_status"], status, limit)]


async def request_marks(db: Store, request_id: uuid.UUID) -> dict[str, Any]:
    """The DLQ columns of a request row (replay count, last replay, purge time)."""
    record = await db.pool.fetchrow(Q["dlq_request_marks"], request_id)
    return {} if record is None else dict(record)
