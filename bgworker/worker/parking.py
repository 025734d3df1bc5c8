"""The parker: over-cap deliveries parked in batches, without a job slot.

A job slot's claim parks one over-cap delivery per transaction, and the intake takes
deliveries only into free slots (``intake``), so a deep backlog of one capped tenant used to
drain into ``parked`` through the few slots its cap leaves free, one claim at a time, and
the other tenants' requests behind it waited for that drain. The parker drains it at
database speed: once a job slot's claim has parked a delivery (proof that the work queue's
head holds over-cap work), the worker opens one more consumer on the work queue, on a
channel of its own with a prefetch of ``PREFETCH`` and the consumer priority ``PRIORITY``,
below the job consumers' (RabbitMQ's ``x-priority``): the broker sends it a delivery only
while every job consumer on the queue is blocked (its one delivery being claimed, or
cancelled for lack of a slot), so a delivery a free slot can take still goes to that slot.

Deliveries are parked as they arrive, all those in hand in one transaction
(``Fairness.park_many``, the same cap locks and counts as the claim), then acked with one
``basic.ack multiple``. One that fits its caps (or that the claim must see: not runnable,
not a valid event, new with a quota set) is handed back, republished to the work queue,
confirmed, before its ack (a new message: its delivery count does not grow), and the
parker cancels its consumer, since the queue's head is no longer over-cap work; the next
park by a job slot opens it again. So a delivery is held only for the one transaction that
parks it, never while it waits for a slot, which keeps the flow control's promise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Final

from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
    ConsumerTag,
)

from bgworker import faults, store
from bgworker.contract import events, states
from bgworker.messaging import broker, topology
from bgworker.observe import logs, metrics
from bgworker.worker import fairness, intake, jobs, sharing

log = logging.getLogger(__name__)

PREFETCH: Final = 64  # deliveries in hand at most, parked in one transaction
PRIORITY: Final = -1  # x-priority: below the job consumers (0), served only when they are blocked
RETRY_SECONDS: Final = 1.0
RPC_TIMEOUT: Final = 10.0

# (max_attempts, (filename, content_type) or None) of an event, as the job's claim records it.
ClaimArgs = Callable[[events.FileRequested], tuple[int, tuple[str, str] | None]]


async def start(
    connection: AbstractRobustConnection,
    runner: jobs.Runner,
    outcomes: Counter[str],
    stopping: asyncio.Event,
    consuming: intake.Intake,
    start_job: sharing.StartJob,
) -> asyncio.Task[None]:
    """The worker's side task: the parker, and under fair share the puller (``sharing``);
    with neither caps nor fair share it only waits for the stop. Each request it parks
    counts in the worker's ``outcomes`` as ``parked``, as a job slot's park does."""
    db, topo, fair = runner.db, runner.topology, runner.fair
    if not fair.limits.capping and not fair.limits.share:
        return asyncio.create_task(_idle(stopping), name="parker")
    channel = await broker.open_channel(connection)
    await channel.set_qos(prefetch_count=PREFETCH)
    queue = await topo.declare_work(channel)
    parker = Parker(
        db=db,
        channel=channel,
        queue=queue,
        topology=topo,
        fair=fair,
        claim_args=runner.claim_args,
        outcomes=outcomes,
    )
    if not fair.limits.share:
        return asyncio.create_task(parker.run(stopping), name="parker")
    # Every slot busy: the parker opens and drains the work queue into ``parked``.
    consuming.on_full = fair.park_wanted.set
    if consuming.busy >= runner.config.concurrency:  # filled before this was set
        fair.park_wanted.set()
    puller = sharing.Puller(db=db, runner=runner, intake=consuming, start_job=start_job)
    return asyncio.create_task(_both(parker.run(stopping), puller.run(stopping)), name="parker")


async def _idle(stopping: asyncio.Event) -> None:
    await stopping.wait()


async def _both(*tasks: Coroutine[Any, Any, None]) -> None:
    await asyncio.gather(*tasks)


@dataclass(kw_only=True)
class Parker:
    db: store.Store
    channel: AbstractChannel
    queue: AbstractQueue
    topology: topology.Topology
    fair: fairness.FairShare
    claim_args: ClaimArgs
    outcomes: Counter[str]
    counts: Counter[str] = field(default_factory=Counter)  # parked, handed_back, opened
    _tag: ConsumerTag | None = field(default=None, init=False)
    _buffer: list[AbstractIncomingMessage] = field(default_factory=list, init=False)
    _changed: asyncio.Event = field(default_factory=asyncio.Event, init=False)

    async def run(self, stopping: asyncio.Event) -> None:
        """Until ``stopping``: open when a job slot parked, park what arrives, close when
        a delivery fits. On stop: cancel the consumer, then park or hand back what is in
        hand, so nothing stays unacked."""
        wanted = self.fair.park_wanted
        while not stopping.is_set():
            try:
                if self._buffer:
                    await self._flush()
                    continue
                if self._tag is None and wanted.is_set():
                    wanted.clear()
                    async with asyncio.timeout(RPC_TIMEOUT):
                        self._tag = await self.queue.consume(
                            self._on_message, arguments={"x-priority": PRIORITY}
                        )
                    self.counts["opened"] += 1
                waits = [asyncio.ensure_future(e.wait()) for e in (self._changed, stopping)]
                if self._tag is None:
                    waits.append(asyncio.ensure_future(wanted.wait()))
                try:
                    await asyncio.wait(waits, timeout=RETRY_SECONDS, return_when="FIRST_COMPLETED")
                finally:
                    for w in waits:
                        w.cancel()
                self._changed.clear()
            except Exception as exc:  # broker or database away: hold what is in hand, retry
                if not faults.report(exc, "parker"):
                    log.warning("parker: %s; retrying", logs.describe(exc))
                with contextlib.suppress(Exception):
                    await self._cancel()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(RETRY_SECONDS):
                        await stopping.wait()
        with contextlib.suppress(Exception):
            await self._cancel()
        while self._buffer:
            try:
                await self._flush()
            except Exception as exc:  # the channel's close returns them to the queue
                log.warning("parker: %d deliveries left unacked: %s", len(self._buffer), exc)
                break

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self._buffer.append(message)
        self._changed.set()

    async def _cancel(self) -> None:
        tag, self._tag = self._tag, None
        if tag is not None:
            async with asyncio.timeout(RPC_TIMEOUT):
                await self.queue.cancel(tag)

    async def _flush(self) -> None:
        """Park every delivery in hand in one transaction; hand back the rest."""
        batch, self._buffer = self._buffer, []
        try:
            parsed: list[events.FileRequested | None] = []
            for message in batch:
                try:
                    parsed.append(events.parse_file_requested(message.body))
                except events.InvalidEventError:
                    parsed.append(None)  # the job slot's claim dead-letters it
            valid = [e for e in parsed if e is not None]
            items = [(e, *self.claim_args(e)) for e in valid]
            results = iter(await self.db.fairness.park_many(items, self.fair.limits))
            parked = 0
            for message, event in zip(batch, parsed, strict=True):
                if event is not None and next(results):
                    parked += 1
                    continue
                request_id = str(event.id) if event else str(message.message_id or "")
                await broker.put_back(self.channel, self.topology, message.body, request_id)
        except BaseException:
            self._buffer[:0] = batch  # still unacked: tried again
            raise
        await batch[-1].ack(multiple=True)
        handed_back = len(batch) - parked
        metrics.PARKED.inc(parked)
        self.counts["parked"] += parked
        self.outcomes[states.JobOutcome.PARKED] += parked
        if parked:
            self.fair.note_parked()
        self.counts["handed_back"] += handed_back
        if handed_back:
            # The queue's head fits: closed until a job slot parks again (after this).
            self.fair.park_wanted.clear()
            await self._cancel()
