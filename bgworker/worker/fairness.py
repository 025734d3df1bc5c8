"""Fair share at the claim: caps per tenant and per file type across every worker.

A request a cap applies to is claimed by ``store.fairness`` under the cap's advisory lock,
counting the slots in use by live leases. One over its cap is recorded ``parked`` and its
delivery acked at once: it holds no worker slot, no delivery and no lease while it waits,
and its delivery count cannot grow. It runs when woken: a worker whose job of that tenant or
file type ended wakes the oldest parked requests that now fit, republishing each, and
every worker's reaper sweeps for parked requests that fit (their waker may have died), so
none is forgotten. A new request
over its tenant's quota is deferred or failed (``over_quota``).
docs/architecture.md, "Fair share", says why this design.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from bgworker import faults, store
from bgworker.contract import events, fairness, states
from bgworker.messaging import broker, topology
from bgworker.observe import logs, metrics
from bgworker.worker import rejection

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class FairShare:
    db: store.Store
    channel: AbstractChannel
    topology: topology.Topology
    limits: fairness.FairnessSettings
    lease_seconds: float
    # Set when a job slot's claim parked a request: the parker (``parking``) opens.
    park_wanted: asyncio.Event = field(default_factory=asyncio.Event)
    # Fair share (``sharing``): set while a parked request may fit a freed slot, which then
    # claims it directly; ``seen``: requests were parked when last looked (a slot that frees
    # may fit one of them). Neither is ever set while nothing was parked: no cost then.
    waiting: asyncio.Event = field(default_factory=asyncio.Event)
    seen: bool = False

    def capped(self, event: events.FileRequested) -> bool:
        """A cap or a quota applies: the claim goes through ``store.fairness``."""
        limits = self.limits
        return limits.limits_tenant(events.tenant_of(event)) or (
            limits.file_type_cap(event.file_type) is not None
        )

    async def claim(
        self,
        event: events.FileRequested,
        max_attempts: int,
        worker: str,
        names: tuple[str, str] | None,
    ) -> store.Claim | store.Parked | store.OverQuota | None:
        """The claim: through the caps when one applies, else the plain one (no lock, no
        count: a deployment without caps claims as before)."""
        if not self.capped(event):
            return await self.db.requests.record_and_claim(
                event, max_attempts, worker, self.lease_seconds, names
            )
        return await self.db.fairness.claim_capped(
            event, max_attempts, worker, self.lease_seconds, self.limits, names
        )

    async def over_quota(
        self,
        message: AbstractIncomingMessage,
        event: events.FileRequested,
        over: store.OverQuota,
        rejecter: rejection.Rejecter,
    ) -> states.JobOutcome:
        """A new request its tenant's quota has no room for (nothing recorded): deferred on
        the retry queue whose delay covers the wait (the longest there is, else), as a new
        message, so no delivery count grows; or, with ``over_quota=fail``, failed and
        dead-lettered with reason ``over_quota``."""
        tenant = events.tenant_of(event)
        metrics.OVER_QUOTA.labels(over.quota, self.limits.over_quota).inc()
        if self.limits.over_quota == "fail":
            await rejecter.reject(
                message,
                states.Reason.OVER_QUOTA,
                "OverQuotaError",
                f"tenant {tenant!r} used its quota of {over.limit} requests "
                f"{over.quota.replace('_', ' ')}; the next fits in {over.retry_after:.0f}s",
                event.id,
            )
            return states.JobOutcome.OVER_QUOTA
        tiers = sorted(self.topology.retry_delays_seconds)
        delay = next((t for t in tiers if t >= over.retry_after), tiers[-1])
        await broker.publish_retry(self.channel, self.topology, message.body, str(event.id), delay)
        await message.ack()  # after the deferred copy is confirmed: raise if it is not
        log.info(
            "request %s: tenant %r over its quota %s (%d of %d); tried again in %.0fs",
            event.id,
            tenant,
            over.quota,
            over.used,
            over.limit,
            delay,
        )
        return states.JobOutcome.OVER_QUOTA

    def parked(self, event: events.FileRequested) -> None:
        """After a request was parked (and its delivery acked). Nothing to wake: a slot
        that freed after the claim counted it is woken by its job, whose wake waits for the
        claim's lock (``store.fairness``), so it sees this request parked."""
        metrics.PARKED.inc()
        self.park_wanted.set()
        self.note_parked()
        log.debug(
            "request %s: parked (tenant %r or file type %s at its cap)",
            event.id,
            events.tenant_of(event),
            event.file_type,
        )

    def note_parked(self) -> None:
        """Requests were just parked: under fair share a freed slot looks for them."""
        if self.limits.share:
            self.seen = True
            self.waiting.set()

    async def freed(self, event: events.FileRequested) -> None:
        """A job of ``event``'s tenant and file type no longer holds its slot: under fair
        share, the slot looks for a parked request that fits (``sharing``); else wake what
        now fits. Never raises: a wake that fails is the sweep's to do."""
        if self.limits.share:
            if self.seen:
                self.waiting.set()
            return
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
        """Wake the parked requests that fit (all of them: no tenant and file type given).
        Under fair share none: freed slots claim them directly (``sharing``)."""
        if self.limits.share:
            return 0

        async def republish(event: dict[str, Any]) -> None:
            await broker.put_back(self.channel, self.topology, event, str(event.get("id")))

        woken = await self.db.fairness.wake(
            self.limits, self.lease_seconds, republish, tenant=tenant, file_type=file_type
        )
        if woken:
            metrics.WOKEN.inc(len(woken))
            log.debug("woke %d parked request(s): %s", len(woken), ", ".join(map(str, woken[:5])))
        return len(woken)
