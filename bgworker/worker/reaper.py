"""The lease reaper and the recovery sweep: requests whose worker or message went missing.

Every worker runs it every ``reap_interval_seconds``. Expired leases (``SELECT ... FOR
UPDATE SKIP LOCKED``, so workers never take the same row) are put back on the requests
exchange and set ``queued``, or, once their attempts are used up that way, marked
``failed`` (``worker_lost``) and dead-lettered. Waiting requests unclaimed for
``recovery_grace_seconds`` (their message was lost) are republished, and retrying ones
sooner (``stranded_retry_seconds``) while the work queue is empty: with nothing waiting in
it, a retry that is due and has not come back is not behind a backlog; it is lost or held
(after a node loss, a retry queue's dead-letter worker can hold it for minutes). Parked
requests whose caps have room are woken (fair share: their waker may have died, or the
caps changed).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from dataclasses import dataclass
from typing import Any, Final

from aio_pika.abc import AbstractChannel

from bgworker import faults, settings, store
from bgworker.contract import states
from bgworker.effects import outcomes
from bgworker.messaging import broker, topology, wire
from bgworker.observe import logs, metrics
from bgworker.worker import fairness

log = logging.getLogger(__name__)

REAP_BATCH: Final = 100


@dataclass(frozen=True, kw_only=True)
class Reaper:
    db: store.Store
    channel: AbstractChannel
    topology: topology.Topology
    worker_id: str
    config: settings.WorkerSettings
    webhooks: settings.WebhookSettings  # the deployment's webhook (a request's own wins)
    fair: fairness.FairShare  # wakes parked requests that fit

    async def _retry_grace(self) -> float:
        """How long past its next run a retrying request waits for its message this round:
        ``stranded_retry_seconds`` when the work queue holds no ready message, else the full
        recovery grace (a retry may be waiting behind a backlog, and republishing it would
        only add duplicates to the queue)."""
        grace = self.config.recovery_grace_seconds
        soon = self.config.stranded_retry_seconds
        if not soon or soon >= grace:
            return grace
        try:
            waiting = await broker.queue_depth(self.channel, self.topology.work_queue)
        except Exception as exc:  # the broker away: the full grace this round
            log.debug("reaper: work queue depth: %s", logs.describe(exc))
            return grace
        return soon if waiting == 0 else grace

    async def run(self, stopping: asyncio.Event) -> None:
        async def requeue(event: dict[str, Any]) -> None:
            await broker.put_back(self.channel, self.topology, event, str(event.get("id")))

        async def dead_letter(row: store.RequestRow) -> None:
            letter = wire.DeadLetter(
                reason=states.Reason.WORKER_LOST,
                error_class="WorkerLostError",
                error=row.last_error or "",
                attempts=row.attempts,
            )
            body = json.dumps(row.event, separators=(",", ":")).encode()
            await broker.publish_dead_letter(
                self.channel,
                self.topology,
                body,
                letter,
                worker_id=self.worker_id,
                message_id=str(row.id),
                routing_key=None,
            )

        while not stopping.is_set():
            try:
                report = await self.db.recovery.reap_expired_leases(
                    REAP_BATCH,
                    requeue,
                    dead_letter,
                    functools.partial(outcomes.failed_effects, webhook_url=self.webhooks.url),
                )
                recovered = await self.db.recovery.recover_stalled(
                    self.config.recovery_grace_seconds,
                    REAP_BATCH,
                    requeue,
                    retry_grace_seconds=await self._retry_grace(),
                )
                # After the reaping: an expired lease no longer holds its slot.
                await self.fair.wake()
            except Exception as exc:  # database or broker away: try next round
                if not faults.report(exc, "reaper"):
                    log.warning("reaper: %s", logs.describe(exc))
            else:
                if report.requeued or report.cancelled or report.failed:
                    metrics.REAPED.inc(report.requeued)
                    log.warning(
                        "reaper: expired leases: requeued %d, cancelled %d, failed %d "
                        "(out of attempts)",
                        report.requeued,
                        report.cancelled,
                        len(report.failed),
                    )
                if recovered.republished or recovered.cancelled:
                    metrics.RECOVERED.inc(len(recovered.republished))
                    log.warning(
                        "recovery: republished %d waiting request(s) whose message had gone "
                        "missing (%s); ended %d waiting request(s) with a pending cancel",
                        len(recovered.republished),
                        ", ".join(map(str, recovered.republished[:5])),
                        recovered.cancelled,
                    )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.reap_interval_seconds):
                    await stopping.wait()
