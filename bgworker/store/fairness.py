"""Fair share in PostgreSQL: the capped claim, parking and waking (queries in
``fairness.sql``; the design in docs/architecture.md, "Fair share").

Invariants: a request is claimed past a cap check only under that cap's advisory lock, so
two workers never both take a tenant's (or file type's) last slot; a slot is counted by a
live lease, so a worker that dies frees its slots when its leases expire; a parked request
has no message and no lease, and leaves ``parked`` only by a wake that republishes it in the
same transaction (or by a cancel), so it is never lost and never dead-lettered for waiting.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Final

import asyncpg

from bgworker.contract import events, fairness
from bgworker.store import connection, queries, requests, rows

Q: Final = queries.QUERIES
bind: Final = queries.bind
WAKE_BATCH: Final = 100


def _cap_key(kind: str, name: str) -> str:
    return f"bgworker.fair_share.{kind}:{name}"


class FairShare(connection.Connected):
    async def claim_capped(
        self,
        event: events.FileRequested,
        max_attempts: int,
        worker: str,
        lease_seconds: float,
        limits: fairness.FairnessSettings,
        names: tuple[str, str] | None = None,
    ) -> rows.Claim | rows.Parked | rows.OverQuota | None:
        """``Requests.record_and_claim`` for a request a cap or quota applies to: a claim
        when its tenant and file type have a free slot, else ``Parked`` (recorded as parked,
        no attempt counted); ``OverQuota`` (nothing recorded) when it is new and its
        tenant's quota is used up. None: not runnable (as record_and_claim)."""
        tenant = events.tenant_of(event)
        tenant_cap = limits.tenant_cap(tenant)
        file_type_cap = limits.file_type_cap(event.file_type)
        async with self.transaction() as conn:
            # Always tenant before file type (see lock_cap).
            if limits.limits_tenant(tenant):
                await conn.execute(Q["lock_cap"], _cap_key("tenant", tenant))
            if file_type_cap is not None:
                await conn.execute(Q["lock_cap"], _cap_key("file_type", event.file_type))
            # A quota counts a request once, when first recorded: a redelivery, a woken or
            # a retried request is not counted again.
            quotas = limits.quotas()
            if quotas and not await conn.fetchval(Q["recorded"], event.id):
                over = await _over_quota(conn, tenant, quotas)
                if over is not None:
                    return over
            record = await conn.fetchrow(
                *bind(
                    "record_and_claim_capped",
                    **requests.request_columns(event, max_attempts, names),
                    worker=worker,
                    lease_seconds=lease_seconds,
                    requested_at_set="requested_at" in event.model_fields_set,
                    tenant_cap=tenant_cap or fairness.UNLIMITED,
                    file_type_cap=file_type_cap or fairness.UNLIMITED,
                )
            )
        if record is None:
            return None
        if record["status"] == "parked":
            return rows.Parked(record["id"])
        return rows.Claim.from_record(record)

    async def park_many(
        self,
        items: list[tuple[events.FileRequested, int, tuple[str, str] | None]],
        limits: fairness.FairnessSettings,
    ) -> list[bool]:
        """Park, in one transaction, each of ``items`` (event, max_attempts, names) that is
        over a cap, as ``claim_capped`` would; True for each parked. False: it fits its caps
        (or is not runnable, or is new with a quota set, which only the claim may count),
        so nothing changed and it belongs to a job slot's claim. The cap locks are taken
        all tenants' first, then all file types', each in sorted order: a claim takes one
        tenant's then one file type's, so no two transactions wait on each other."""
        # Under fair share every one is parked, cap or not: no count, so no lock.
        share = limits.share
        if share and not limits.quotas():
            return await self._park_all(items, limits)
        tenants = [] if share else sorted({events.tenant_of(e) for e, _, _ in items})
        file_types = [] if share else sorted({e.file_type for e, _, _ in items})
        parked: list[bool] = []
        async with self.transaction() as conn:
            for tenant in tenants:
                if limits.limits_tenant(tenant):
                    await conn.execute(Q["lock_cap"], _cap_key("tenant", tenant))
            for file_type in file_types:
                if limits.file_type_cap(file_type) is not None:
                    await conn.execute(Q["lock_cap"], _cap_key("file_type", file_type))
            quotas = bool(limits.quotas())
            for event, max_attempts, names in items:
                tenant = events.tenant_of(event)
                tenant_cap = limits.tenant_cap(tenant)
                file_type_cap = limits.file_type_cap(event.file_type)
                if (not share and tenant_cap is None and file_type_cap is None) or (
                    quotas and not await conn.fetchval(Q["recorded"], event.id)
                ):
                    parked.append(False)
                    continue
                parked.append(
                    await conn.fetchval(
                        *bind(
                            "park_capped",
                            **requests.request_columns(event, max_attempts, names),
                            requested_at_set="requested_at" in event.model_fields_set,
                            tenant_cap=tenant_cap or fairness.UNLIMITED,
                            file_type_cap=file_type_cap or fairness.UNLIMITED,
                            share=share,
                        )
                    )
                )
        return parked

    async def _park_all(
        self,
        items: list[tuple[events.FileRequested, int, tuple[str, str] | None]],
        limits: fairness.FairnessSettings,
    ) -> list[bool]:
        """``park_many`` under fair share without quotas: nothing to count or lock, so the
        parks go pipelined (one round trip for the batch, in order: each gets a later
        ``received_at``), then one look says which are parked (a duplicate delivery of a
        request running or finished is not: handed back, its claim settles it)."""
        args = [
            bind(
                "park_capped",
                **requests.request_columns(event, max_attempts, names),
                requested_at_set="requested_at" in event.model_fields_set,
                tenant_cap=fairness.UNLIMITED,
                file_type_cap=fairness.UNLIMITED,
                share=True,
            )[1:]
            for event, max_attempts, names in items
        ]
        async with self.transaction() as conn:
            await conn.executemany(Q["park_capped"], args)
            found = await conn.fetch(Q["parked_of"], [e.id for e, _, _ in items])
        # A different body under a parked id (a conflicting duplicate) was not parked: its
        # claim dead-letters it.
        parked = {r["id"]: r["event"] for r in found}
        return [e.id in parked and events.same_request(parked[e.id], e) for e, _, _ in items]

    async def claim_parked(
        self, worker: str, lease_seconds: float, limits: fairness.FairnessSettings
    ) -> rows.DirectClaim | None:
        """Fair share: the fairest parked request that fits its hard caps, claimed for a
        freed job slot (``claim_parked`` in fairness.sql); None: none fits now. Without hard
        caps one statement; with them, the pick is claimed again under its caps' locks (as
        ``claim_capped`` counts), so a cap holds exactly against concurrent claims."""
        caps = _cap_arrays(limits)
        args = {"worker": worker, "lease_seconds": lease_seconds, **caps}
        if not limits.capping:
            record = await self.pool.fetchrow(*bind("claim_parked", **args, only=None, dry=False))
            return _direct(record)
        pick = await self.pool.fetchrow(*bind("claim_parked", **args, only=None, dry=True))
        if pick is None:
            return None
        async with self.transaction() as conn:
            # Tenant before file type, as every claim takes them (lock_cap).
            if limits.limits_tenant(pick["tenant"]):
                await conn.execute(Q["lock_cap"], _cap_key("tenant", pick["tenant"]))
            if limits.file_type_cap(pick["file_type"]) is not None:
                await conn.execute(Q["lock_cap"], _cap_key("file_type", pick["file_type"]))
            record = await conn.fetchrow(*bind("claim_parked", **args, only=pick["id"], dry=False))
        return _direct(record)

    async def any_parked(self) -> bool:
        """Whether any request is parked (one indexed look)."""
        return bool(await self.pool.fetchval(Q["any_parked"], None, None))

    async def wake(
        self,
        limits: fairness.FairnessSettings,
        lease_seconds: float,
        republish: Callable[[dict[str, Any]], Awaitable[None]],
        *,
        tenant: str | None = None,
        file_type: str | None = None,
    ) -> list[uuid.UUID]:
        """Wake the parked requests whose caps have room now, oldest first: each is set
        ``queued`` and republished (confirmed) in one transaction, so a crash leaves it
        parked for the next wake. ``tenant``/``file_type``: only those a slot of that
        tenant or file type frees (a finished job); neither: all (the sweep)."""
        woken: list[uuid.UUID] = []
        async with self.transaction() as conn:
            # The locks of the caps this slot counted against, as the claims take them: a
            # claim that counted the slot as busy and parked a request has committed before
            # this looks, so no request is parked behind a slot whose wake did not see it.
            if tenant is not None and limits.limits_tenant(tenant):
                await conn.execute(Q["lock_cap"], _cap_key("tenant", tenant))
            if file_type is not None and limits.file_type_cap(file_type) is not None:
                await conn.execute(Q["lock_cap"], _cap_key("file_type", file_type))
            if not await conn.fetchval(Q["any_parked"], tenant, file_type):
                return woken
            await conn.execute(Q["lock_wakes"])
            ids = await conn.fetch(
                *bind(
                    "parked_to_wake",
                    tenant=tenant,
                    file_type=file_type,
                    **_cap_arrays(limits),
                    lease_seconds=lease_seconds,
                    limit=WAKE_BATCH,
                )
            )
            for record in ids:
                event = await conn.fetchval(Q["wake_parked"], record["id"])
                if event is not None:
                    await republish(event)
                    woken.append(record["id"])
        return woken

    async def over_quota(
        self, tenant: str, limits: fairness.FairnessSettings
    ) -> rows.OverQuota | None:
        """For POST /requests: the quota a new request of ``tenant`` would exceed, if any.
        Without the claim's lock: POSTs racing for a tenant's last request may overshoot."""
        quotas = limits.quotas()
        if not quotas:
            return None
        async with self.pool.acquire() as conn:
            return await _over_quota(conn, tenant, quotas)

    async def quota_usage(self, tenant: str, window_seconds: float) -> tuple[int, float]:
        """Requests of ``tenant`` counted in the last ``window_seconds``, and the seconds
        until the oldest of them leaves the window."""
        usage = await self.pool.fetchrow(Q["quota_usage"], tenant, float(window_seconds))
        return int(usage["used"]), float(usage["frees_in"])

    async def tenant_counts(
        self, tenant: str | None = None, limit: int = 20
    ) -> list[rows.TenantCounts]:
        """In-flight, parked and queued requests per tenant, the busiest first."""
        return [
            rows.TenantCounts(r["tenant"], r["in_flight"], r["parked"], r["queued"])
            for r in await self.pool.fetch(Q["tenant_counts"], tenant, limit)
        ]


def _cap_arrays(limits: fairness.FairnessSettings) -> dict[str, Any]:
    tenants = list(limits.tenant_limits)
    file_types = list(limits.file_type_limits)
    return {
        "default_cap": limits.tenant_in_flight or None,
        "tenants": tenants,
        "tenant_caps": [limits.tenant_limits[t] for t in tenants],
        "file_types": file_types,
        "file_type_caps": [limits.file_type_limits[f] for f in file_types],
    }


def _direct(record: asyncpg.Record | None) -> rows.DirectClaim | None:
    if record is None or record["lease_token"] is None:
        return None  # nothing fits, or the pick was claimed by another slot meanwhile
    return rows.DirectClaim(rows.Claim.from_record(record), record["event"])


async def _over_quota(
    conn: asyncpg.Connection, tenant: str, quotas: list[tuple[str, int, int]]
) -> rows.OverQuota | None:
    for name, limit, window in quotas:
        usage = await conn.fetchrow(Q["quota_usage"], tenant, float(window))
        if usage["used"] >= limit:
            return rows.OverQuota(name, limit, usage["used"], max(1.0, usage["frees_in"]))
    return None
