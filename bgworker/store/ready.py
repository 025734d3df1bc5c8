"""A job's ``ready`` outcome: the row, its attempt and its outbox rows, recorded for the
jobs that finish together in one commit (group commit, ``grouping``), each row fenced on its
own lease token (query ``mark_ready`` in ``requests.sql``).

On the job path the claim read the whole row (``record_and_claim``), so the outcome's
effects are built before it is recorded, from the row as it will be, and ``mark_ready``
writes them itself: the group is one pipelined statement in one implicit transaction (one
round trip). The two times only that statement knows (``ready_at``, ``expires_at``) it
sets in the payloads. A bundle's part (its last part writes the bundle's email) or a claim
without its row writes its effects after the statement, from the updated row; a group with
one of those runs in an explicit transaction. Either way a group commits all or nothing.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from bgworker.contract import progress, states
from bgworker.store import grouping, outbox, queries, rows


@dataclass(frozen=True)
class ReadyJob:
    """One ``mark_ready`` call waiting for its group's transaction."""

    claim: rows.Claim
    size: int
    sha256: str
    storage_key: str
    effects: rows.Effects
    reported: progress.Progress | None
    # The caller's context: its effects read the job's trace and log fields from it, even
    # when another job's call runs the transaction.
    context: contextvars.Context


def _effects_ahead(claim: rows.Claim) -> bool:
    """Whether a job's effects can be built before its outcome is recorded: its claim read
    the row, and it is no bundle's part (whose last part writes the bundle's email)."""
    return claim.row is not None and claim.row.bundle_id is None


def _as_ready(job: ReadyJob) -> rows.RequestRow:
    """The row as mark_ready will leave it, for its effects: ready_at and expires_at are
    placeholders here, which the statement replaces by the times it records."""
    assert job.claim.row is not None
    now = datetime.now(UTC)
    return dataclasses.replace(
        job.claim.row,
        status=states.Status.READY,
        size_bytes=job.size,
        sha256=job.sha256,
        storage_key=job.storage_key,
        finished_at=now,
        expires_at=now,
    )


def _built_ahead(job: ReadyJob) -> list[dict[str, Any]]:
    """The effects mark_ready writes itself ([] when they are written after it)."""
    if not _effects_ahead(job.claim):
        return []
    return [{"kind": k, "payload": p} for k, p in job.context.run(job.effects, _as_ready(job))]


class Ready(outbox.WritesEffects):
    async def mark_ready(
        self,
        claim: rows.Claim,
        *,
        size: int,
        sha256: str,
        storage_key: str,
        effects: rows.Effects,
        reported: progress.Progress | None = None,
    ) -> rows.RequestRow | None:
        """Commit ``ready`` with its outbox rows, or None when the lease was lost.
        ``reported``: the handler's last progress, saved with it. Jobs that finish while
        another's commit is on its way share the next transaction (``grouping``)."""
        job = ReadyJob(
            claim, size, sha256, storage_key, effects, reported, contextvars.copy_context()
        )
        return await self.group.submit(job)

    @functools.cached_property
    def group(self) -> grouping.GroupCommit[ReadyJob, rows.RequestRow | None]:
        return grouping.GroupCommit(self._mark_ready_many)

    async def _mark_ready_many(self, jobs: list[ReadyJob]) -> list[rows.RequestRow | None]:
        """One commit for the jobs that finished together: every row fenced on its own lease
        token, and the effects of those still ours; all or nothing, as one flush promises.
        When every claim read its row (the job path), the effects go in mark_ready's own
        statement, built ahead: one pipelined round trip in one implicit transaction. A
        bundle's part, or a claim without its row, writes them after the statement, from
        the updated row, and then the group runs in an explicit transaction."""
        # Sorted: rows locked in one order whichever jobs met in the statement.
        ordered = sorted(jobs, key=lambda j: j.claim.request_id)
        sql = queries.NAMED["mark_ready"].sql
        args = [self._args(j, _built_ahead(j)) for j in ordered]
        claimed: list[rows.OutboxItem] = []
        if all(_effects_ahead(j.claim) for j in ordered):
            async with self.pool.acquire() as conn:
                records = await conn.fetchmany(sql, args)
            ready = {r["id"]: rows.RequestRow.from_record(r) for r in records}
        else:
            async with self.transaction() as conn:
                records = await conn.fetchmany(sql, args)
                ready = {r["id"]: rows.RequestRow.from_record(r) for r in records}
                items = [
                    (row.id, kind, payload)
                    for j in ordered
                    if not _effects_ahead(j.claim)
                    and (row := ready.get(j.claim.request_id)) is not None
                    for kind, payload in j.context.run(j.effects, row)
                ]
                claimed = await self.outbox.insert_effects_of(conn, items)
        self.outbox.announce(self._written(records) + claimed)
        return [ready.get(j.claim.request_id) for j in jobs]

    def _args(self, job: ReadyJob, effects: list[dict[str, Any]]) -> tuple[Any, ...]:
        return queries.NAMED["mark_ready"].args(
            request_id=job.claim.request_id,
            lease_token=job.claim.lease_token,
            size=job.size,
            sha256=job.sha256,
            storage_key=job.storage_key,
            attempt=job.claim.attempt,
            done=job.reported.done if job.reported else None,
            total=job.reported.total if job.reported else None,
            effects=effects,
            claim_seconds=self.outbox.claim_effects_seconds,
        )

    def _written(self, records: list[asyncpg.Record]) -> list[rows.OutboxItem]:
        """The outbox rows mark_ready wrote itself, claimed by this process (none when it
        leaves them to the sweep)."""
        if self.outbox.claim_effects_seconds is None:
            return []
        return [
            rows.OutboxItem(
                r["id"],
                states.EffectKind(e["kind"]),
                e["payload"],
                e["attempts"],
                r["link_generation"],
            )
            for r in records
            for e in r["inserted"]
        ]
