"""A request's life in ``bgworker_requests``: intake, the claim, the heartbeat, and every
outcome of an attempt (queries in ``requests.sql``).

Invariants: a request is recorded and claimed in one statement; every outcome after the
claim is fenced by the lease token (``WHERE lease_token = $token``), so a worker that lost
its lease changes nothing; a pending cancel wins over whatever the handler did; a message
published with an outcome (retry, dead letter, release) is confirmed inside the
transaction that records it.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import Any, Final

from bgworker.contract import events, progress, states
from bgworker.store import bundles, claiming, outbox, queries, rows

Q: Final = queries.QUERIES
bind: Final = queries.bind


def request_columns(
    event: events.FileRequested, max_attempts: int, names: tuple[str, str] | None = None
) -> dict[str, Any]:
    """The columns an event fills: the first nine parameters of record_and_claim and
    supersede_invalid, and the tenant (their last). ``event`` is stored as published, so
    a redelivery compares equal to it; ``names`` is the (filename, content_type) to serve,
    as the worker filled them from the handler when the producer left them out."""
    requester = event.requester
    # Recorded without the worker's fill: the defaults of a file type that declares nothing.
    filename, content_type = names or (
        event.filename or event.file_type,
        event.content_type or events.DEFAULT_CONTENT_TYPE,
    )
    return {
        "id": event.id,
        "file_type": event.file_type,
        "event": event.model_dump(mode="json"),
        "filename": filename,
        "content_type": content_type,
        "requester_id": requester.id if requester else None,
        "requester_email": requester.email if requester else None,
        "requested_at": event.requested_at,
        "max_attempts": max_attempts,
        "tenant": events.tenant_of(event),
    }


class Requests(outbox.WritesEffects):
    # -- intake -------------------------------------------------------------------------

    async def insert_invalid_request(
        self,
        request_id: uuid.UUID,
        raw: object,
        reason: str,
        error_class: str,
        error: str,
        effects: rows.Effects,
    ) -> bool:
        """Record a rejected event as failed (with its outbox rows) unless the id is taken."""
        file_type = raw.get("file_type") if isinstance(raw, dict) else None
        async with self.transaction() as conn:
            inserted = await conn.fetchval(
                *bind(
                    "insert_invalid_request",
                    id=request_id,
                    file_type=file_type if isinstance(file_type, str) else "",
                    event=raw if raw is not None else {},
                    failure_reason=reason,
                    error_class=error_class,
                    error=error,
                )
            )
            if inserted is None:
                return False
            row = rows.RequestRow.from_record(await conn.fetchrow(Q["get_request"], request_id))
            claimed = await self.outbox.insert_effects(conn, row.id, effects(row))
        self.outbox.announce(claimed)
        return True

    # -- running ------------------------------------------------------------------------

    async def record_and_claim(
        self,
        event: events.FileRequested,
        max_attempts: int,
        worker: str,
        lease_seconds: float,
        names: tuple[str, str] | None = None,
    ) -> rows.Claim | None:
        """Insert the request if new and claim it if runnable, in one statement. None: not
        runnable (done, running elsewhere, cancelled, or a different body under this id).
        Deliveries that arrive together (a consumer's prefetch, see ``worker.intake``) are
        claimed together: one pipelined round trip and one commit (``grouping``), every row
        with its own lease token."""
        _, *args = bind(
            "record_and_claim",
            **request_columns(event, max_attempts, names),
            worker=worker,
            lease_seconds=lease_seconds,
            requested_at_set="requested_at" in event.model_fields_set,
        )
        return await self.claims.claim(event.id, tuple(args))

    @functools.cached_property
    def claims(self) -> claiming.Claims:
        return claiming.Claims(self.pool)

    async def supersede_invalid(
        self,
        event: events.FileRequested,
        max_attempts: int,
        worker: str,
        lease_seconds: float,
        reasons: Iterable[str],
        names: tuple[str, str] | None = None,
    ) -> rows.Claim | None:
        """Replace a request recorded as failed for one of ``reasons`` (validation) by
        ``event`` and claim it; None when the row is not such a request."""
        record = await self.pool.fetchrow(
            *bind(
                "supersede_invalid",
                **request_columns(event, max_attempts, names),
                worker=worker,
                lease_seconds=lease_seconds,
                reasons=list(reasons),
            )
        )
        return None if record is None else rows.Claim.from_record(record)

    async def heartbeat(
        self, claim: rows.Claim, lease_seconds: float, reported: progress.Progress | None
    ) -> bool:
        """Renew the lease and save the progress last reported (None: none yet). False: the
        lease is gone (cancelled or taken over)."""
        row = await self.pool.fetchval(
            *bind(
                "heartbeat",
                request_id=claim.request_id,
                lease_token=claim.lease_token,
                lease_seconds=lease_seconds,
                fraction=reported.fraction if reported else None,
                done=reported.done if reported else None,
                total=reported.total if reported else None,
                reported=reported is not None,
            )
        )
        return row is not None

    # -- outcomes (fenced by the lease token) -------------------------------------------

    async def mark_retrying(
        self,
        claim: rows.Claim,
        *,
        error_class: str,
        error: str,
        next_run_at: datetime,
        publish: Callable[[], Awaitable[None]],
    ) -> bool:
        """Record the retry and, inside the same transaction, put the retry message on the
        broker: if the publish is not confirmed, the row stays running and its lease expires
        into the reaper, so the request is never left waiting for a message that is not there.
        """
        async with self.transaction() as conn:
            row = await conn.fetchval(
                *bind(
                    "mark_retrying",
                    request_id=claim.request_id,
                    lease_token=claim.lease_token,
                    error_class=error_class,
                    error=error,
                    next_run_at=next_run_at,
                )
            )
            if row is None:
                return False
            await conn.execute(
                *_finish_attempt(
                    claim,
                    states.AttemptOutcome.RETRYING,
                    error_class=error_class,
                    error=error,
                    next_run_at=next_run_at,
                )
            )
            await publish()
        return True

    async def mark_failed(
        self,
        claim: rows.Claim,
        *,
        reason: str,
        error_class: str,
        error: str,
        effects: rows.Effects,
        publish: Callable[[], Awaitable[None]],
    ) -> rows.RequestRow | None:
        """Commit ``failed`` with its outbox rows; ``publish`` (the dead letter) runs inside
        the transaction, so the row is failed only once the broker confirmed the letter."""
        async with self.transaction() as conn:
            record = await conn.fetchrow(
                *bind(
                    "mark_failed",
                    request_id=claim.request_id,
                    lease_token=claim.lease_token,
                    failure_reason=reason,
                    error_class=error_class,
                    error=error,
                )
            )
            if record is None:
                return None
            row = rows.RequestRow.from_record(record)
            await conn.execute(
                *_finish_attempt(
                    claim, states.AttemptOutcome.FAILED, error_class=error_class, error=error
                )
            )
            claimed = await self.outbox.insert_effects(conn, row.id, effects(row))
            await publish()
        self.outbox.announce(claimed)
        return row

    async def cancel_claimed(self, claim: rows.Claim) -> bool:
        """End a claimed attempt whose request has a pending cancel (cancellation wins over
        whatever the handler did); False when the lease is no longer ours."""
        async with self.transaction() as conn:
            row = await conn.fetchval(Q["cancel_claimed"], claim.request_id, claim.lease_token)
            if row is None:
                return False
            await conn.execute(*_finish_attempt(claim, states.AttemptOutcome.CANCELLED))
        return True

    async def mark_cancelled(self, claim: rows.Claim) -> bool:
        async with self.transaction() as conn:
            row = await conn.fetchval(Q["mark_cancelled"], claim.request_id)
            await conn.execute(*_finish_attempt(claim, states.AttemptOutcome.CANCELLED))
        return row is not None

    async def release(
        self, claim: rows.Claim, publish: Callable[[dict[str, Any]], Awaitable[None]]
    ) -> bool:
        """Give a running job back to the queue (shutdown): row and message together."""
        async with self.transaction() as conn:
            event = await conn.fetchval(Q["release_request"], claim.request_id, claim.lease_token)
            if event is None:
                return False
            await conn.execute(Q["drop_attempt"], claim.request_id, claim.attempt)
            await publish(event)
        return True

    async def request_cancel(
        self, request_id: uuid.UUID, *, email: str | None = None
    ) -> states.Status | None:
        """Cancel a request; returns its status afterwards, or None if it is not cancellable
        (or, with ``email``, the "my files" page's address, not requested with it). Without
        ``email``, a bundle's id cancels the bundle (no email) and each of its parts."""
        parts = None if email is not None else await bundles.cancel_bundle(self.pool, request_id)
        if parts is not None:
            return bundles.status_of_parts({await self.request_cancel(p) for p in parts})
        status: str | None = await self.pool.fetchval(Q["request_cancel"], request_id, email)
        return None if status is None else states.Status(status)

    async def cancel_or_placeholder(self, request_id: uuid.UUID) -> rows.Cancelled:
        """A producer's cancel (see ``cancel_or_placeholder`` in the SQL); idempotent. A
        bundle's id cancels the bundle (no email) and each of its parts."""
        if (parts := await bundles.cancel_bundle(self.pool, request_id)) is not None:
            return _of_bundle([await self.cancel_or_placeholder(part) for part in parts])
        for _ in range(3):  # a row inserted by a racing statement is read on the next turn
            record = await self.pool.fetchrow(Q["cancel_or_placeholder"], request_id)
            if record is None:
                record = await self.pool.fetchrow(Q["request_status"], request_id)
                if record is None:
                    continue
                status = states.Status(record["status"])
                return rows.Cancelled(status, record["cancel_requested"])
            status = states.Status(record["status"])
            return rows.Cancelled(status, True, bool(record["placeholder"]), changed=True)
        raise RuntimeError(f"request {request_id}: neither cancelled nor found")

    # -- reading ------------------------------------------------------------------------

    async def get_request(self, request_id: uuid.UUID) -> rows.RequestRow | None:
        record = await self.pool.fetchrow(Q["get_request"], request_id)
        return None if record is None else rows.RequestRow.from_record(record)

    async def list_attempts(self, request_id: uuid.UUID) -> list[dict[str, Any]]:
        return [dict(r) for r in await self.pool.fetch(Q["list_attempts"], request_id)]


def _of_bundle(parts: list[rows.Cancelled]) -> rows.Cancelled:
    """A bundle's cancel as one answer: running while a part stops at its next renewal,
    cancelled when a part was, else the status of a part that had ended (nothing to do)."""
    if any(p.status == states.Status.RUNNING and p.cancel_requested for p in parts):
        return rows.Cancelled(states.Status.RUNNING, True, changed=True)
    if any(p.changed for p in parts):
        return rows.Cancelled(states.Status.CANCELLED, True, changed=True)
    ended = [p.status for p in parts if p.status != states.Status.CANCELLED]
    return rows.Cancelled(ended[0] if ended else states.Status.CANCELLED, False)


def _finish_attempt(
    claim: rows.Claim,
    outcome: states.AttemptOutcome,
    *,
    error_class: str | None = None,
    error: str | None = None,
    next_run_at: datetime | None = None,
) -> tuple[Any, ...]:
    return bind(
        "finish_attempt",
        request_id=claim.request_id,
        attempt=claim.attempt,
        outcome=outcome,
        error_class=error_class,
        error=error,
        next_run_at=next_run_at,
    )
