"""Fair share at the claim: caps per tenant and per file type across every worker.

A request a cap applies to is claimed by ``store.fairness`` under the cap's advisory lock,
counting the slots in use by live leases. One over its cap is recorded ``parked`` and its
delivery acked at once: it holds no worker slot, no delivery and no lease while it waits,
and its delivery count cannot grow. It runs when woken: a worker whose job of that tenant or
file type ended (or that parked one: a slot may have freed meanwhile) wakes the oldest
parked requests that now fit, republishing each, and every worker's reaper sweeps for
parked requests that fit (their waker may have died), so none is forgotten.
docs/architecture.md, "Fair share", says why this design.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from aio_pika.abc import AbstractChannel

from bgworker import faults, store
from bgworker.contract import events, fairness
from bgworker.messaging import broker, topology
from bgworker.observe import logs, metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class FairShare:
    db: store.Store
    channel: AbstractChannel
    topology: topology.Topology
    limits: fairness.FairnessSettings
    lease_seconds: float

    def capped(self, event: events.FileRequested) -> bool:
        limits = self.limits
        return (
            limits.tenant_cap(events.tenant_of(event)) is not None
            or limits.file_type_cap(event.file_type) is not None
        )

    async def claim(
        self,
        event: events.FileRequested,
        max_attempts: int,
        worker: str,
        names: tuple[str, str] | None,
    ) -> store.Claim | store.Parked | None:
        """The claim: through the caps when one applies, else the plain one (no lock, no
        count: a deployment without caps claims as before)."""
        if not self.capped(event):
            return await self.db.requests.record_and_claim(
                event, max_attempts, worker, self.lease_seconds, names
            )
        return await self.db.fairness.claim_capped(
            event, max_attempts, worker, self.lease_seconds, self.limits, names
        )

    async def parked(self, event: events.FileRequested) -> None:
        """After a request was parked (and its delivery acked)."""
        metrics.PARKED.inc()
        log.info(
            "request %s: parked (tenant %r or file type %s at its cap)",
            event.id,
            events.tenant_of(event),
            event.file_type,
        )
        # A slot of its tenant may have freed between the count and the commit, its job's
        # wake not seeing this row yet: look once more now that the row is committed.
        await self.freed(event)

    async def freed(self, event: events.FileRequested) -> None:
        """A job of ``event``'s tenant and file type no longer holds its slot: wake what
        now fits. Never raises: a wake that fails is the sweep's to do."""
        if not self.limits.capping:
            return
        try:
            await self.wake(tenant=events.tenant_of(event), file_type=event.file_type)
        except Exception as exc:
            if not faults.report(exc, "wake"):
                log.warning(
                    "wake of parked requests failed (the sweep retries): %s", logs.describe(exc)
                )

    async def wake(self, *, tenant: str | None = None, file_type: str | None = None) -> int:
        """Wake the parked requests that fit (all of them: no tenant and file type given)."""

        async def republish(event: dict[str, Any]) -> None:
            await broker.put_back(self.channel, self.topology, event, str(event.get("id")))

        woken = await self.db.fairness.wake(
            self.limits, self.lease_seconds, republish, tenant=tenant, file_type=file_type
        )
        if woken:
            metrics.WOKEN.inc(len(woken))
            log.info("woke %d parked request(s): %s", len(woken), ", ".join(map(str, woken[:5])))
        return len(woken)
