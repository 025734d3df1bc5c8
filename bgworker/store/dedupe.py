"""Dedupe by content, the store side (queries in ``dedupe.sql``): one decision per call,
under an advisory lock on the fingerprint, fenced on the caller's lease token."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from typing import Final

from bgworker.store import outbox, queries, rows

Q: Final = queries.QUERIES
bind: Final = queries.bind


class Step(enum.Enum):
    REUSED = "reused"  # the claimed row is ready on another request's bytes
    WAIT = "wait"  # another request of the fingerprint is being built: look again later
    LEAD = "lead"  # nothing to reuse or wait for: this request builds
    LOST = "lost"  # the lease is gone or a cancel is pending: the caller settles it


@dataclass(frozen=True)
class Decision:
    step: Step
    row: rows.RequestRow | None = None  # the reused row (REUSED)
    builder: uuid.UUID | None = None  # what it waits for (WAIT)


class Dedupe(outbox.WritesEffects):
    async def dedupe_step(
        self, claim: rows.Claim, fingerprint: str, window_seconds: float, effects: rows.Effects
    ) -> Decision:
        """Reuse a fresh ready file (with ``effects``: the ready email and event, as a build
        would), else wait for an identical request being built, else lead. One transaction:
        the lock makes the decisions of identical requests one at a time."""
        async with self.transaction() as conn:
            await conn.execute(Q["dedupe_lock"], fingerprint)
            record = await conn.fetchrow(
                *bind(
                    "dedupe_reuse",
                    request_id=claim.request_id,
                    lease_token=claim.lease_token,
                    fingerprint=fingerprint,
                    window_seconds=window_seconds,
                    attempt=claim.attempt,
                )
            )
            if record is not None:
                row = rows.RequestRow.from_record(record)
                claimed = await self.outbox.insert_effects(conn, row.id, effects(row))
                reused = Decision(Step.REUSED, row=row)
            else:
                builder = await conn.fetchval(
                    Q["dedupe_builder"], fingerprint, claim.request_id, window_seconds
                )
                if builder is not None:
                    return Decision(Step.WAIT, builder=builder)
                led = await conn.fetchval(
                    Q["dedupe_lead"], claim.request_id, claim.lease_token, fingerprint
                )
                return Decision(Step.LEAD if led is not None else Step.LOST)
        self.outbox.announce(claimed)
        return reused
