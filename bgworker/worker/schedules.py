"""Publishing schedules from the workers: no scheduler process (issue 23).

Every worker runs this side task every ``reap_interval_seconds``. A round:

1. claims the active schedules nobody holds (or whose holder's lease expired) and renews
   the leases it holds: one statement, ``FOR UPDATE SKIP LOCKED``, leases of
   ``lease_seconds`` with a token per holding;
2. fires each held schedule that is due: one transaction, fenced on the lease token, records
   the period's request in ``bgworker_schedule_runs`` (request id ``uuid5(schedule,
   period)``) and moves ``next_run_at`` past now;
3. publishes recorded periods not yet confirmed (any worker's), each with the broker's
   confirm, marking them in the transaction that locked them.

A worker killed with ``kill -9`` while holding schedules stops renewing; its leases expire
and another worker claims them, so the next period is at most ``lease_seconds`` (plus a
round) late. A period it recorded but had not published is published by whichever worker
runs step 3 next; one it had published but not marked is published again under the same
request id, which the worker that takes it drops as a duplicate. At stop, a worker releases
its schedules at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass
from typing import Any, Final

from aio_pika.abc import AbstractChannel

from bgworker import faults, settings, store
from bgworker.messaging import broker, topology
from bgworker.observe import logs

log = logging.getLogger(__name__)

BATCH: Final = 100


@dataclass(frozen=True, kw_only=True)
class Publisher:
    db: store.Store
    channel: AbstractChannel
    topology: topology.Topology
    worker_id: str
    lease_seconds: float
    interval_seconds: float

    async def run(self, stopping: asyncio.Event) -> None:
        try:
            while not stopping.is_set():
                try:
                    await self.round()
                except Exception as exc:  # database or broker away: next round
                    if not faults.report(exc, "schedules"):
                        log.warning("schedules: %s", logs.describe(exc))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.interval_seconds):
                        await stopping.wait()
        finally:
            with contextlib.suppress(Exception):  # they expire anyway
                await self.db.schedules.release(self.worker_id)

    async def round(self) -> int:
        """One round (claim, fire, publish); how many periods were published."""
        held = await self.db.schedules.claim(self.worker_id, self.lease_seconds, BATCH)
        for schedule in held:
            if not schedule.due:
                continue
            fired = await self.db.schedules.fire(schedule)
            if fired is None:
                continue
            if fired.period is not None:
                log.info(
                    "schedule %s: period %s -> request %s%s",
                    schedule.id,
                    fired.period.isoformat(),
                    fired.request_id,
                    f" ({fired.missed} older missed period(s) skipped)" if fired.missed else "",
                )
            if fired.ended:
                log.info("schedule %s: ended (its end date passed)", schedule.id)
        published = 0
        while n := await self.db.schedules.publish_runs(BATCH, self._publish):
            published += n
        return published

    async def _publish(self, request_id: uuid.UUID, event: dict[str, Any]) -> None:
        await broker.put_back(self.channel, self.topology, event, str(request_id))


def start(
    db: store.Store,
    channel: AbstractChannel,
    topo: topology.Topology,
    worker_id: str,
    config: settings.WorkerSettings,
    stopping: asyncio.Event,
) -> asyncio.Task[None]:
    """The side task: rounds every ``reap_interval_seconds``, leases of ``lease_seconds``."""
    publisher = Publisher(
        db=db,
        channel=channel,
        topology=topo,
        worker_id=worker_id,
        lease_seconds=config.lease_seconds,
        interval_seconds=config.reap_interval_seconds,
    )
    return asyncio.create_task(publisher.run(stopping), name="schedules")
