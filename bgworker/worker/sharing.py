"""Fair share, work-conserving: a freed job slot claims the fairest parked request itself.

The work queue is FIFO: another tenant's requests behind one tenant's backlog would wait
for all of it. Under ``BGWORKER_FAIRNESS__SHARE`` the parker (``parking``) drains the queue
into ``parked`` while every job slot is busy, and a slot that frees takes, in one statement
(``store.fairness.claim_parked``), the parked request of the tenant with the fewest running,
the oldest first, under the hard caps, and runs its stored event: no republish, no second
delivery. While parked requests may fit (``FairShare.waiting``) the intake opens no
consumer for a freed slot (``Intake.holding``), so the slot comes here; once none fits, the
intake takes deliveries again. A tenant alone still uses every slot: its own parked requests
are as fair as any. A worker with idle slots looks for parked requests every
``POLL_SECONDS`` (another worker's parker may have parked them). Everything else is the
claim's: the lease, its fencing, the reaper that puts back a request whose worker died.
docs/architecture.md, "Fair share", says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Final

from bgworker import faults, store
from bgworker.contract import events, states
from bgworker.observe import logs
from bgworker.worker import intake, jobs

log = logging.getLogger(__name__)

POLL_SECONDS: Final = 0.5  # a worker with idle slots looks for parked requests this often
RETRY_SECONDS: Final = 1.0
RETRIES: Final = 3  # claims that found nothing while parked rows are left, retried at once

# Runs a job in the slot the puller took, as a task the worker drains and counts.
StartJob = Callable[[Coroutine[Any, Any, states.JobOutcome], str], None]


@dataclass(kw_only=True)
class Puller:
    db: store.Store
    runner: jobs.Runner
    intake: intake.Intake
    start_job: StartJob
    counts: Counter[str] = field(default_factory=Counter)  # claimed, none, raced, polled
    _misses: int = field(default=0, init=False)  # claims in a row that found nothing

    def __post_init__(self) -> None:
        self.intake.holding = self.runner.fair.waiting.is_set

    async def run(self, stopping: asyncio.Event) -> None:
        fair = self.runner.fair
        slots = self.intake.slots  # the concurrency, or the handler threads (all plain def)
        polled = 0.0
        while not stopping.is_set():
            self.intake.freed.clear()
            try:
                if fair.waiting.is_set():
                    self.intake.poke()  # idle consumers close; their slots come here
                    await self._fill(stopping)
                elif self.intake.busy < slots and time.monotonic() - polled >= POLL_SECONDS:
                    polled = time.monotonic()
                    self.counts["polled"] += 1
                    if await self.db.fairness.any_parked():
                        fair.note_parked()
                        continue
            except Exception as exc:  # PostgreSQL away: the slot was given back; retry
                if not faults.report(exc, "fair share"):
                    log.warning("fair share: %s; retrying", logs.describe(exc))
                await _sleep(stopping, RETRY_SECONDS)
                continue
            waits = [asyncio.ensure_future(e.wait()) for e in (stopping, self.intake.freed)]
            if not fair.waiting.is_set():
                waits.append(asyncio.ensure_future(fair.waiting.wait()))
            try:
                await asyncio.wait(waits, timeout=POLL_SECONDS, return_when="FIRST_COMPLETED")
            finally:
                for w in waits:
                    w.cancel()

    async def _fill(self, stopping: asyncio.Event) -> None:
        """Claim parked requests into the free slots until none fits."""
        fair = self.runner.fair
        while fair.waiting.is_set() and not stopping.is_set() and self.intake.take():
            try:
                direct = await self.db.fairness.claim_parked(
                    self.runner.worker_id, self.runner.config.lease_seconds, fair.limits
                )
            except BaseException:
                self.intake.release(counted=False)
                raise
            if direct is None and await self._raced():
                self.intake.release(counted=False)
                continue
            if direct is None:
                self.counts["none"] += 1
                self.intake.release(counted=False)
                fair.waiting.clear()  # the intake takes deliveries again
                self.intake.poke()
                # Still parked (over a hard cap, or taken meanwhile): a slot that frees looks.
                fair.seen = await self.db.fairness.any_parked()
                return
            self._misses = 0
            self.counts["claimed"] += 1
            self.start_job(run_parked(self.runner, direct), f"job-{direct.claim.request_id}")

    async def _raced(self) -> bool:
        """Whether a claim that found nothing lost a race rather than the parked rows: its
        statement saw each tenant's oldest few as of its start, and another worker may have
        claimed those since. Parked rows left, and this happened fewer than ``RETRIES`` times
        in a row: claim again at once (giving up would idle the slot until the next poll).
        Rows left over a hard cap end it after ``RETRIES``."""
        self._misses += 1
        if self._misses > RETRIES or not await self.db.fairness.any_parked():
            self._misses = 0
            return False
        self.counts["raced"] += 1
        return True


async def run_parked(runner: jobs.Runner, direct: store.DirectClaim) -> states.JobOutcome:
    """A directly claimed request, run in its slot as a delivery's claim would run it."""
    claim = direct.claim
    body = json.dumps(direct.event).encode()
    try:
        event = events.parse_file_requested(body)
    except events.InvalidEventError as exc:  # stored by an older version that read it
        return await runner.finalizer.fail(claim, body, exc, reason=states.Reason(exc.reason))
    logs.bind(
        request_id=str(event.id),
        file_type=event.file_type,
        worker_id=runner.worker_id,
        attempt=claim.attempt,
    )
    log.debug("request %s: claimed from parked (fair share)", event.id)
    registration = runner.registry.find(event.file_type)
    outcome = await runner.attempt(event, claim, registration, body)
    await runner.fair.freed(event)
    return outcome


async def _sleep(stopping: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stopping.wait()
