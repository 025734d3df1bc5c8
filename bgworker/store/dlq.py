"""Request-row side of dead-letter replay and purge (queries in ``queries.sql``, ``dlq_*``)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from bgworker.store import Q, Store

if TYPE_CHECKING:
    from bgworker.dlq import Decision
    from bgworker.dlq_letter import Letter

# (status or None, cancel_requested, lease live) -> what to do; the rule lives in bgworker.dlq.
Rule = Callable[[str | None, bool, bool], "Decision"]


def _letter_args(letter: Letter) -> tuple[Any, ...]:
    return (letter.reason, letter.error_class, letter.error, letter.last_death)


async def requeue(
    db: Store,
    request_id: uuid.UUID,
    *,
    letter: Letter,
    actor: str,
    keep_attempts: bool,
    decide: Rule,
    publish: Callable[[int], Awaitable[None]],
) -> tuple[Decision, int]:
    """Apply the replay rule to one request, as one unit.

    The row is locked and ``decide`` says what to do. When the request is to run again,
    the row is changed (failed or forced: back to ``queued``; queued/retrying: left as it
    is) and the replay recorded, then ``publish`` runs inside the transaction: the change
    commits only once the broker has confirmed the message (a refused publish rolls it
    back). Otherwise only the skip is recorded and nothing is published. Returns the
    decision and the replay number (0 when nothing was published).
    """
    async with db.transaction() as conn:
        row = await conn.fetchrow(Q["dlq_lock_request"], request_id)
        status: str | None = row["status"] if row else None
        attempts: int | None = row["attempts"] if row else None
        decision = decide(
            status, bool(row and row["cancel_requested"]), bool(row and row["lease_live"])
        )
        forced = decision.plan == "force"
        if decision.plan in ("replay", "force"):
            history = None
            replays = 1
            if row is not None:
                if not keep_attempts:
                    history = await conn.fetchval(Q["dlq_take_attempts"], request_id)
                replays = await conn.fetchval(Q["dlq_requeue"], request_id, keep_attempts, forced)
            detail = "attempts kept" if keep_attempts else "attempts reset"
            detail = f"forced: cancel cleared, {detail}" if forced else detail
        elif decision.plan == "republish":
            history = None
            replays = await conn.fetchval(Q["dlq_mark_republished"], request_id)
            detail = f"republished: row left {status}"
        else:
            await conn.execute(
                Q["dlq_insert_action"],
                request_id if row else None,
                letter.key,
                "skip",
                actor,
                decision.why,
                status,
                attempts,
                *_letter_args(letter),
                None,
            )
            return decision, 0
        await conn.execute(
            Q["dlq_insert_action"],
            request_id,
            letter.key,
            "replay",
            actor,
            detail,
            status,
            attempts,
            *_letter_args(letter),
            history,
        )
        await publish(replays)
    return decision, replays


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
