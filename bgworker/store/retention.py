"""Retention's side in PostgreSQL (``retention.sql``): one pruning batch at a time.

Each batch is one statement, so one short transaction: it locks at most ``limit`` rows,
skips any a worker or an operator holds (``SKIP LOCKED``) and never waits for them, and
commits before the next begins. A dry run executes the same statement in a transaction it
rolls back, so it counts exactly what a real run would prune.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import asyncpg

from bgworker.store import queries

Q: Final = queries.QUERIES

# What each stage prunes, in the order ``clean`` runs them: the scrubs first, the rows last
# (deleting a row deletes what is left hanging off it).
STAGES: Final = {
    "criteria": "retention_criteria",
    "addresses": "retention_addresses",
    "bundle_addresses": "retention_bundle_addresses",
    "attempts": "retention_attempts",
    "outbox": "retention_outbox",
    "producer_outbox": "retention_producer_outbox",
    "dead_letter_records": "retention_dlq_actions",
    "rows": "retention_rows",
    # Issue 23's tables, after the rows: a bundle goes once its parts' rows are gone.
    "bundles": "retention_bundles",
    "schedule_runs": "retention_schedule_runs",
    "schedules": "retention_schedules",
}
# Where a first batch starts: before any row.
START: Final = (datetime(1, 1, 1, tzinfo=UTC), "")


@dataclass(frozen=True)
class Batch:
    pruned: int
    scanned: int
    # Where the next batch of the same run starts (None: this one looked at nothing).
    after: tuple[datetime, str] | None


class Retention:
    """The store's retention part (``Store.retention``)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def prune(
        self,
        stage: str,
        keep_seconds: float,
        limit: int,
        after: tuple[datetime, str] = START,
        *,
        dry_run: bool = False,
    ) -> Batch:
        """One batch of ``stage`` (a key of STAGES), rows ended before ``keep_seconds`` ago."""
        args = (Q[STAGES[stage]], keep_seconds, limit, after[0], after[1])
        async with self.pool.acquire() as conn:
            if dry_run:
                tx = conn.transaction()
                await tx.start()
                try:
                    records = await conn.fetch(*args)
                finally:
                    await tx.rollback()
            else:
                records = await conn.fetch(*args)
        if not records:
            return Batch(0, 0, None)
        last = records[-1]
        return Batch(int(records[0]["pruned"]), len(records), (last["ended"], last["key"]))
