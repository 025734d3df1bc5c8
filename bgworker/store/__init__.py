"""Request state in PostgreSQL: one method per named query over an asyncpg pool."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import asyncpg

from bgworker import events
from bgworker.store import dead_letters, listing
from bgworker.store.queries import QUERIES

Q: Final = QUERIES
# Failures that mean "the database is away for now": retry later, never crash. asyncpg
# raises InternalClientError too when a connection dies mid-operation (server restart).
TRANSIENT_ERRORS: Final = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)
PostgresError: Final = asyncpg.PostgresError


@dataclass(frozen=True)
class RequestRow:
    id: uuid.UUID
    file_type: str
    status: str
    event: dict[str, Any]
    filename: str
    content_type: str
    requester_id: str | None
    requester_email: str | None
    attempts: int
    max_attempts: int | None
    last_error_class: str | None
    last_error: str | None
    failure_reason: str | None
    progress: float | None
    size_bytes: int | None
    sha256: str | None
    storage_key: str | None
    requested_at: datetime
    received_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    notified_at: datetime | None
    expires_at: datetime | None
    next_run_at: datetime | None
    cancel_requested: bool
    lease_owner: str | None
    lease_token: uuid.UUID | None
    lease_expires_at: datetime | None
    updated_at: datetime

    @classmethod
    def from_record(cls, record: asyncpg.Record) -> RequestRow:
        return cls(**{f.name: record[f.name] for f in fields(cls)})

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, datetime):
                value = value.isoformat()
            elif isinstance(value, uuid.UUID):
                value = str(value)
            out[f.name] = value
        return out


# Builds the outbox rows (kind, payload) a state change causes, from the updated row.
Effects = Callable[["RequestRow"], list[tuple[str, dict[str, Any]]]]


@dataclass(frozen=True)
class Claim:
    request_id: uuid.UUID
    attempt: int
    lease_token: uuid.UUID
    max_attempts: int | None


@dataclass
class ReapReport:
    requeued: int = 0
    cancelled: int = 0
    failed: list[uuid.UUID] = field(default_factory=list)


@dataclass
class RecoveryReport:
    republished: list[uuid.UUID] = field(default_factory=list)
    cancelled: int = 0


@dataclass(frozen=True)
class OutboxItem:
    request_id: uuid.UUID
    kind: str
    payload: dict[str, Any]
    attempts: int


async def _init_connection(conn: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _no_reset(conn: asyncpg.Connection) -> None:
    # asyncpg's default reset runs a round trip (RESET ALL, UNLISTEN, ...) on every release.
    # bgworker keeps no session state (only transaction-scoped locks), so skip it.
    return None


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init_connection, reset=_no_reset
    )
    assert pool is not None
    return pool


@asynccontextmanager
async def opened(dsn: str, *, max_size: int = 2) -> AsyncIterator[Store]:
    """A small pool for one-shot commands (CLI), closed on exit."""
    pool = await create_pool(dsn, max_size=max_size)
    try:
        yield Store(pool)
    finally:
        await pool.close()


async def ensure_database(dsn: str) -> bool:
    """Create the database named in ``dsn`` if it is missing; True when it was created."""
    try:
        conn = await asyncpg.connect(dsn)
    except asyncpg.InvalidCatalogNameError:
        pass
    else:
        await conn.close()
        return False
    name = unquote(urlsplit(dsn).path.lstrip("/"))
    if not name:
        raise ValueError("the database URL names no database")
    admin = await asyncpg.connect(dsn, database="postgres")
    try:
        await admin.execute(f'CREATE DATABASE "{name.replace(chr(34), "")}"')
    except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
        # Two `migrate` runs racing on a new database: the loser's CREATE DATABASE fails on
        # pg_database's unique name index (UniqueViolation) rather than with
        # DuplicateDatabase when both passed the existence check at the same instant.
        return False
    finally:
        await admin.close()
    return True


class Store:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        claim_effects_seconds: float | None = None,
        on_effects: Callable[[list[OutboxItem]], None] | None = None,
    ) -> None:
        """``claim_effects_seconds``: outbox rows start claimed by this process for that
        long, and ``on_effects`` gets them once their transaction committed (a worker's
        dispatcher performs them at once). Without it they wait for a dispatcher's sweep."""
        self.pool = pool
        self.claim_effects_seconds = claim_effects_seconds
        self.on_effects = on_effects
        self.dead_letters = dead_letters.DeadLetterRecords(pool)
        self.listing = listing.Listing(pool)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        async with self.pool.acquire() as conn, conn.transaction():
            yield conn

    # -- intake -------------------------------------------------------------------------

    @staticmethod
    def _request_columns(event: events.FileRequested, max_attempts: int) -> tuple[Any, ...]:
        """$1..$9 of insert_request and record_and_claim."""
        requester = event.requester
        return (
            event.id,
            event.file_type,
            event.model_dump(mode="json"),
            event.filename,
            event.content_type,
            requester.id if requester else None,
            requester.email if requester else None,
            event.requested_at,
            max_attempts,
        )

    async def insert_request(self, event: events.FileRequested, max_attempts: int) -> None:
        await self.pool.execute(Q["insert_request"], *self._request_columns(event, max_attempts))

    async def insert_invalid_request(
        self,
        request_id: uuid.UUID,
        raw: object,
        reason: str,
        error_class: str,
        error: str,
        effects: Effects,
    ) -> bool:
        """Record a rejected event as failed (with its outbox rows) unless the id is taken."""
        file_type = raw.get("file_type") if isinstance(raw, dict) else None
        async with self.transaction() as conn:
            inserted = await conn.fetchval(
                Q["insert_invalid_request"],
                request_id,
                file_type if isinstance(file_type, str) else "",
                raw if raw is not None else {},
                reason,
                error_class,
                error,
            )
            if inserted is None:
                return False
            row = RequestRow.from_record(await conn.fetchrow(Q["get_request"], request_id))
            claimed = await self._insert_effects(conn, row.id, effects(row))
        self._announce(claimed)
        return True

    # -- running ------------------------------------------------------------------------

    async def record_and_claim(
        self, event: events.FileRequested, max_attempts: int, worker: str, lease_seconds: float
    ) -> Claim | None:
        """Insert the request if new and claim it if runnable, in one statement. None: not
        runnable (done, running elsewhere, cancelled, or a different body under this id)."""
        row = await self.pool.fetchrow(
            Q["record_and_claim"],
            *self._request_columns(event, max_attempts),
            worker,
            lease_seconds,
            "requested_at" in event.model_fields_set,
        )
        if row is None:
            return None
        return Claim(row["id"], row["attempts"], row["lease_token"], row["max_attempts"])

    async def supersede_invalid(
        self,
        event: events.FileRequested,
        max_attempts: int,
        worker: str,
        lease_seconds: float,
        reasons: Iterable[str],
    ) -> Claim | None:
        """Replace a request recorded as failed for one of ``reasons`` (validation) by
        ``event`` and claim it; None when the row is not such a request."""
        row = await self.pool.fetchrow(
            Q["supersede_invalid"],
            *self._request_columns(event, max_attempts),
            worker,
            lease_seconds,
            list(reasons),
        )
        if row is None:
            return None
        return Claim(row["id"], row["attempts"], row["lease_token"], row["max_attempts"])

    async def heartbeat(self, claim: Claim, lease_seconds: float, progress: float | None) -> bool:
        row = await self.pool.fetchval(
            Q["heartbeat"], claim.request_id, claim.lease_token, lease_seconds, progress
        )
        return row is not None

    async def mark_ready(
        self,
        claim: Claim,
        *,
        size: int,
        sha256: str,
        storage_key: str,
        effects: Effects,
    ) -> RequestRow | None:
        """Commit ``ready`` with its outbox rows, or None when the lease was lost."""
        async with self.transaction() as conn:
            record = await conn.fetchrow(
                Q["mark_ready"],
                claim.request_id,
                claim.lease_token,
                size,
                sha256,
                storage_key,
                claim.attempt,
            )
            if record is None:
                return None
            row = RequestRow.from_record(record)
            claimed = await self._insert_effects(conn, row.id, effects(row))
        self._announce(claimed)
        return row

    async def mark_retrying(
        self,
        claim: Claim,
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
                Q["mark_retrying"],
                claim.request_id,
                claim.lease_token,
                error_class,
                error,
                next_run_at,
            )
            if row is None:
                return False
            await conn.execute(
                Q["finish_attempt"],
                claim.request_id,
                claim.attempt,
                "retrying",
                error_class,
                error,
                next_run_at,
            )
            await publish()
        return True

    async def mark_failed(
        self,
        claim: Claim,
        *,
        reason: str,
        error_class: str,
        error: str,
        effects: Effects,
        publish: Callable[[], Awaitable[None]],
    ) -> RequestRow | None:
        """Commit ``failed`` with its outbox rows; ``publish`` (the dead letter) runs inside
        the transaction, so the row is failed only once the broker confirmed the letter."""
        async with self.transaction() as conn:
            record = await conn.fetchrow(
                Q["mark_failed"], claim.request_id, claim.lease_token, reason, error_class, error
            )
            if record is None:
                return None
            row = RequestRow.from_record(record)
            await conn.execute(
                Q["finish_attempt"],
                claim.request_id,
                claim.attempt,
                "failed",
                error_class,
                error,
                None,
            )
            claimed = await self._insert_effects(conn, row.id, effects(row))
            await publish()
        self._announce(claimed)
        return row

    async def cancel_claimed(self, claim: Claim) -> bool:
        """End a claimed attempt whose request has a pending cancel (cancellation wins over
        whatever the handler did); False when the lease is no longer ours."""
        async with self.transaction() as conn:
            row = await conn.fetchval(Q["cancel_claimed"], claim.request_id, claim.lease_token)
            if row is None:
                return False
            await conn.execute(
                Q["finish_attempt"], claim.request_id, claim.attempt, "cancelled", None, None, None
            )
        return True

    async def mark_cancelled(self, claim: Claim) -> bool:
        async with self.transaction() as conn:
            row = await conn.fetchval(Q["mark_cancelled"], claim.request_id)
            await conn.execute(
                Q["finish_attempt"], claim.request_id, claim.attempt, "cancelled", None, None, None
            )
        return row is not None

    async def release(
        self, claim: Claim, publish: Callable[[dict[str, Any]], Awaitable[None]]
    ) -> bool:
        """Give a running job back to the queue (shutdown): row and message together."""
        async with self.transaction() as conn:
            event = await conn.fetchval(Q["release_request"], claim.request_id, claim.lease_token)
            if event is None:
                return False
            await conn.execute(
                "DELETE FROM bgworker_attempts WHERE request_id = $1 AND attempt = $2",
                claim.request_id,
                claim.attempt,
            )
            await publish(event)
        return True

    async def request_cancel(self, request_id: uuid.UUID) -> str | None:
        """Cancel a request; returns its status afterwards, or None if it is not cancellable."""
        status: str | None = await self.pool.fetchval(Q["request_cancel"], request_id)
        return status

    # -- recovery -----------------------------------------------------------------------

    async def reap_expired_leases(
        self,
        limit: int,
        requeue: Callable[[dict[str, Any]], Awaitable[None]],
        dead_letter: Callable[[RequestRow], Awaitable[None]],
        effects: Effects,
    ) -> ReapReport:
        """Requests whose worker died (lease expired): requeued, or failed once they have
        used all their attempts that way (a handler that kills its process every time)."""
        report = ReapReport()
        claimed: list[OutboxItem] = []
        async with self.transaction() as conn:
            for row in await conn.fetch(Q["expired_leases"], limit):
                rid, attempts = row["id"], row["attempts"]
                owner = row["lease_owner"] or "?"
                await conn.execute(Q["lose_attempt"], rid, attempts, owner)
                if row["cancel_requested"]:
                    await conn.execute(Q["mark_cancelled"], rid)
                    report.cancelled += 1
                elif attempts >= (row["max_attempts"] or 1):
                    error = (
                        f"attempt {attempts} of {row['max_attempts']}: worker {owner} "
                        "stopped while running it (lease expired)"
                    )
                    failed = RequestRow.from_record(
                        await conn.fetchrow(Q["fail_expired"], rid, error)
                    )
                    claimed += await self._insert_effects(conn, rid, effects(failed))
                    await dead_letter(failed)
                    report.failed.append(rid)
                else:
                    # Publish before the update commits: a crash in between leaves the row
                    # running-and-expired, so the next reaper publishes again (a duplicate
                    # message, which claiming makes harmless) rather than never.
                    await requeue(row["event"])
                    await conn.execute(Q["requeue_expired"], rid)
                    report.requeued += 1
        self._announce(claimed)
        return report

    async def recover_stalled(
        self,
        grace_seconds: float,
        limit: int,
        republish: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> RecoveryReport:
        """Republish waiting requests whose message has gone missing (see the query), and end
        waiting requests with a pending cancel. Each republish is confirmed inside the
        transaction that records it, so a crash leaves the row eligible again."""
        report = RecoveryReport()
        async with self.transaction() as conn:
            report.cancelled = len(await conn.fetch(Q["cancel_waiting"]))
            for row in await conn.fetch(Q["stalled_requests"], grace_seconds, limit):
                await republish(row["event"])
                await conn.execute(Q["mark_recovered"], row["id"])
                report.republished.append(row["id"])
        return report

    # -- outbox -------------------------------------------------------------------------

    async def _insert_effects(
        self, conn: asyncpg.Connection, request_id: uuid.UUID, items: list[tuple[str, Any]]
    ) -> list[OutboxItem]:
        if not items:
            return []
        rows = await conn.fetch(
            Q["insert_outbox"],
            request_id,
            [kind for kind, _ in items],
            [payload for _, payload in items],
            self.claim_effects_seconds,
        )
        if self.claim_effects_seconds is None:
            return []
        return [OutboxItem(r["request_id"], r["kind"], r["payload"], r["attempts"]) for r in rows]

    def _announce(self, claimed: list[OutboxItem]) -> None:
        # Called after the commit only: an effect must never run for a rolled-back change.
        if claimed and self.on_effects is not None:
            self.on_effects(claimed)

    async def claim_outbox_due(self, limit: int, claim_seconds: float) -> list[OutboxItem]:
        rows = await self.pool.fetch(Q["claim_outbox_due"], limit, claim_seconds)
        return [OutboxItem(r["request_id"], r["kind"], r["payload"], r["attempts"]) for r in rows]

    async def outbox_done(self, item: OutboxItem) -> None:
        await self.pool.execute(Q["outbox_done"], item.request_id, item.kind)

    async def outbox_retry(self, item: OutboxItem, error: str, delay_seconds: float) -> None:
        await self.pool.execute(Q["outbox_retry"], item.request_id, item.kind, error, delay_seconds)

    # -- reading ------------------------------------------------------------------------

    async def get_request(self, request_id: uuid.UUID) -> RequestRow | None:
        record = await self.pool.fetchrow(Q["get_request"], request_id)
        return None if record is None else RequestRow.from_record(record)

    async def list_attempts(self, request_id: uuid.UUID) -> list[dict[str, Any]]:
        return [dict(r) for r in await self.pool.fetch(Q["list_attempts"], request_id)]

    async def list_outbox(self, request_id: uuid.UUID) -> list[dict[str, Any]]:
        return [dict(r) for r in await self.pool.fetch(Q["list_outbox"], request_id)]

    async def count_by_status(self) -> dict[str, int]:
        return {r["status"]: r["n"] for r in await self.pool.fetch(Q["count_by_status"])}
