"""Request state in PostgreSQL, behind one façade: :class:`Store`.

Every database call of bgworker goes through a ``Store`` method, and every method runs
named queries from the ``.sql`` files next to this module (parsed once by ``queries``), as
procrastinate's ``JobManager`` does. The store is split by concept, one module and one
query file each, composed into ``Store``:

- ``requests``: intake, claim, progress, the fenced outcomes of an attempt, reading;
- ``ready``: the ``ready`` outcome with its effects, for the jobs that finish together;
- ``leases``: the running jobs' leases, renewed from a thread and connection of their own;
- ``recovery``: the lease reaper and the sweep for requests whose message went missing;
- ``outbox``: side effects written with their state change, then performed;
- ``maintenance``: ping, counts, expiry for ``bgworker clean``;
- ``links``: the link generation (revoke) and re-arming a sent email (resend);
- ``connection``: the pool and the database; ``rows``: what the queries return;
- ``migrations``: the numbered schema files; ``dead_letters``: the request-row side of
  dead-letter replay and purge; ``listing``: the console's requests by status;
  ``gauges``: what the worker's metrics sample; ``traces``: a job's trace context.
  ``admin_sessions``: the console's server-side sessions and secrets; ``front_door``: the
  events ``POST /requests`` accepted, by id; ``dedupe``: reusing a ready file of identical
  content, or waiting for the one being built; ``erasure``: one person's data erased
  (``bgworker forget``); ``retention``: pruning what the retention settings no longer
  keep, a batch at a time (``bgworker clean``); ``my_files``: the requester's page of
  their own files; ``producer_outbox``: producers' events
  written in their own transactions, for the relay; ``fairness``: the capped claim, parked
  requests and their wake (fair share); ``schedules``: recurring requests, their leases and
  the period each firing records (issue 23).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

import asyncpg

from bgworker.store import (
    admin_sessions,
    bundles,
    connection,
    dead_letters,
    dedupe,
    erasure,
    fairness,
    front_door,
    gauges,
    leases,
    links,
    listing,
    maintenance,
    my_files,
    outbox,
    producer_outbox,
    queries,
    ready,
    recovery,
    requests,
    retention,
    rows,
    schedules,
    traces,
)

PART_ENDED = bundles.PART_ENDED
BundleRow = bundles.BundleRow

__all__ = [
    "PART_ENDED",
    "TRANSIENT_ERRORS",
    "BundleRow",
    "Claim",
    "DedupeDecision",
    "DedupeStep",
    "DirectClaim",
    "Effects",
    "ExpiredFile",
    "LeaseKeeper",
    "OutboxBacklog",
    "OutboxItem",
    "OverQuota",
    "Parked",
    "Pooler",
    "PostgresError",
    "Q",
    "ReapReport",
    "RecoveryReport",
    "RequestRow",
    "Store",
    "TenantCounts",
    "VanishedError",
    "create_pool",
    "ensure_database",
    "opened",
    "transaction_pooled",
]

Q: Final = queries.QUERIES
TRANSIENT_ERRORS: Final = connection.TRANSIENT_ERRORS
PostgresError: Final = connection.PostgresError
create_pool: Final = connection.create_pool
ensure_database: Final = connection.ensure_database
transaction_pooled: Final = connection.transaction_pooled
Pooler = connection.Pooler

RequestRow = rows.RequestRow
VanishedError = front_door.VanishedError
Claim = rows.Claim
Parked = rows.Parked
DirectClaim = rows.DirectClaim
OverQuota = rows.OverQuota
TenantCounts = rows.TenantCounts
DedupeDecision = dedupe.Decision
DedupeStep = dedupe.Step
OutboxItem = rows.OutboxItem
ReapReport = rows.ReapReport
RecoveryReport = rows.RecoveryReport
ExpiredFile = rows.ExpiredFile
Effects = rows.Effects
OutboxBacklog = gauges.OutboxBacklog
LeaseKeeper = leases.LeaseKeeper


class Store:
    """The one way to the database: ``Store(pool, claim_effects_seconds=...,
    on_effects=...)``, then one part per concept, each its own object: ``db.requests``,
    ``db.ready``, ``db.recovery``, ``db.outbox``, ``db.dedupe``, ``db.links``, ``db.maintenance``,
    ``db.gauges``, ``db.traces``, ``db.dead_letters``, ``db.listing``, ``db.my_files``,
    ``db.admin_sessions``, ``db.front_door``, ``db.erasure``, ``db.retention``,
    ``db.producer_outbox``, ``db.fairness``, ``db.schedules``, ``db.bundles``. The parts whose
    transactions
    cause effects (requests, ready, recovery, dedupe) write them through the one ``outbox``, which
    knows how they reach this process's dispatcher (``claim_effects_seconds``, ``on_effects``)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        claim_effects_seconds: float | None = None,
        on_effects: connection.EffectsHook | None = None,
    ) -> None:
        self.pool = pool
        self.outbox = outbox.Outbox(
            pool, claim_effects_seconds=claim_effects_seconds, on_effects=on_effects
        )
        self.requests = requests.Requests(pool, self.outbox)
        self.ready = ready.Ready(pool, self.outbox)
        self.recovery = recovery.Recovery(pool, self.outbox)
        self.dedupe = dedupe.Dedupe(pool, self.outbox)
        self.links = links.Links(pool)
        self.maintenance = maintenance.Maintenance(pool)
        self.gauges = gauges.Gauges(pool)
        self.traces = traces.Traces(pool)
        self.dead_letters = dead_letters.DeadLetterRecords(pool)
        self.listing = listing.Listing(pool)
        self.my_files = my_files.MyFiles(pool)
        self.admin_sessions = admin_sessions.AdminSessions(pool)
        self.front_door = front_door.FrontDoor(pool)
        self.erasure = erasure.Erasure(pool)
        self.retention = retention.Retention(pool)
        self.producer_outbox = producer_outbox.ProducerOutbox(pool)
        self.fairness = fairness.FairShare(pool)
        self.schedules = schedules.Schedules(pool)
        self.bundles = bundles.Bundles(pool)


@asynccontextmanager
async def opened(
    dsn: str, *, max_size: int = 2, pooler: connection.Pooler = "none"
) -> AsyncIterator[Store]:
    """A small pool for one-shot commands (CLI), closed on exit."""
    pool = await create_pool(dsn, max_size=max_size, pooler=pooler)
    try:
        yield Store(pool)
    finally:
        await pool.close()
