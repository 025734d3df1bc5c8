"""Bundles in ``bgworker_bundles``: recorded with a queued request row per part, finished
once by the transaction that ends the last part (queries in ``bundles.sql``).

Invariants: the bundle and its parts' rows are one transaction, whose parts' messages are
confirmed before it commits (a redelivery of the bundle after the commit is a duplicate and
publishes nothing; one before it finds nothing recorded and does it all again, and the
parts' ids make their messages idempotent). The bundle's one email is written by the
transaction that finds no part in progress any more, under the bundle row's lock
(``lock_bundle``), so two parts ending at once cannot both miss it nor both write it.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import asyncpg

from bgworker.contract import requester_texts, states
from bgworker.store import connection, queries, rows

Q: Final = queries.QUERIES
bind: Final = queries.bind

# The pseudo-effect a part's outcome carries (effects.outcomes): never stored, it asks the
# outbox writer to see whether the part's bundle just ended (``finish_effects``).
PART_ENDED: Final = "bundle_part_ended"


@dataclass(frozen=True)
class BundleRow:
    id: uuid.UUID
    event: dict[str, Any]
    requester_id: str | None
    requester_email: str | None
    tenant: str
    parts: int
    created_at: datetime
    finished_at: datetime | None
    cancel_requested: bool

    @classmethod
    def from_record(cls, record: asyncpg.Record) -> BundleRow:
        return cls(**dict(record))


class Bundles(connection.Connected):
    async def record(
        self,
        bundle: dict[str, Any],
        parts: list[dict[str, Any]],
        publish: Callable[[], Awaitable[None]],
    ) -> bool:
        """Record the bundle (``bundle``: insert_bundle's columns) and its parts (each
        insert_bundle_part's), then ``publish`` their messages, in one transaction (not when a
        cancel came first: the parts are recorded cancelled). False: a bundle with this id is
        recorded already (nothing is done)."""
        async with self.transaction() as conn:
            if await conn.fetchval(*bind("insert_bundle", **bundle)) is None:
                return False
            named = queries.NAMED["insert_bundle_part"]
            await conn.executemany(named.sql, [named.args(**part) for part in parts])
            if not await conn.fetch(Q["cancel_bundle_first"], bundle["id"]):
                await publish()
        return True

    async def get(self, bundle_id: uuid.UUID) -> BundleRow | None:
        record = await self.pool.fetchrow(Q["get_bundle"], bundle_id)
        return None if record is None else BundleRow.from_record(record)

    async def parts(self, bundle_id: uuid.UUID) -> list[rows.RequestRow]:
        return [
            rows.RequestRow.from_record(r)
            for r in await self.pool.fetch(Q["bundle_parts"], bundle_id)
        ]

    async def crcs(self, bundle_id: uuid.UUID) -> dict[uuid.UUID, int]:
        """The CRC-32s recorded for the bundle's parts (``record_crc``)."""
        found = await self.pool.fetch(Q["part_crcs"], bundle_id)
        return {r["id"]: r["crc32"] for r in found if r["crc32"] is not None}

    async def record_crc(self, request_id: uuid.UUID, crc: int, sha256: str) -> None:
        await self.pool.execute(Q["record_crc"], request_id, crc, sha256)


async def cancel_bundle(pool: asyncpg.Pool, bundle_id: uuid.UUID) -> list[uuid.UUID] | None:
    """Mark the bundle cancelled (it sends no email then); its parts' ids, for the caller to
    cancel each as a single request is. None: no bundle has this id (a request's id)."""
    record = await pool.fetchrow(Q["cancel_bundle"], bundle_id)
    if record is None:
        return None
    return list(record["parts"] or [])


def status_of_parts(found: set[states.Status | None]) -> states.Status | None:
    """A bundle's cancel answered from its parts' own: running while any runs (it stops at
    its next lease renewal), cancelled if any was, None when every part had ended."""
    if states.Status.RUNNING in found:
        return states.Status.RUNNING
    return states.Status.CANCELLED if states.Status.CANCELLED in found else None


async def finish_effects(
    conn: asyncpg.Connection, ended: list[tuple[uuid.UUID, uuid.UUID]]
) -> list[tuple[uuid.UUID, str, Any]]:
    """For each (part request id, bundle id) whose part just ended in this transaction: the
    bundle's email when that part was the last one in progress, on the part's outbox row."""
    items: list[tuple[uuid.UUID, str, Any]] = []
    # Sorted: bundles locked in one order whichever parts met in the transaction.
    for bundle_id, request_id in sorted({b: r for r, b in ended}.items()):
        await conn.execute(Q["lock_bundle"], bundle_id)
        finished = await conn.fetchrow(Q["finish_bundle"], bundle_id)
        if finished is None or not finished["requester_email"]:
            continue
        parts = [
            rows.RequestRow.from_record(r) for r in await conn.fetch(Q["bundle_parts"], bundle_id)
        ]
        items.append((request_id, states.EffectKind.EMAIL_BUNDLE, email_payload(finished, parts)))
    return items


def email_payload(finished: asyncpg.Record, parts: list[rows.RequestRow]) -> dict[str, Any]:
    """What the bundle's email says: each part's name and how it ended (a failed part with
    the requester's text for its reason, never exception text)."""
    event: dict[str, Any] = finished["event"]
    requester = event.get("requester") or {}
    listed = [
        {
            "index": part.bundle_index,
            "filename": part.filename,
            "status": part.status.value,
            "message": (
                requester_texts.failure(part.failure_reason)
                if part.status == states.Status.FAILED
                else ""
            ),
        }
        for part in parts
    ]
    return {
        "bundle_id": str(finished["id"]),
        "requester_id": finished["requester_id"],
        "to": finished["requester_email"],
        "language": requester.get("language") or "en",
        "timezone": requester.get("timezone") or "UTC",
        "description": str(event.get("description") or ""),
        "parts": listed,
        "ready": sum(1 for p in listed if p["status"] == states.Status.READY),
        "failed": sum(1 for p in listed if p["status"] == states.Status.FAILED),
        "finished_at": finished["finished_at"].isoformat(),
    }
