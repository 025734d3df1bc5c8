"""Flow control: the work queue is consumed only as far as this worker can start jobs.

A delivery is acknowledged as soon as its claim commits (see ``jobs``), so a prefetch
window no longer counts running jobs: with prefetch = concurrency a busy worker was sent
more deliveries than it had free slots, and held them. Instead the intake opens up to
``CONSUMERS`` consumers on the work queue, each with a prefetch of ``p`` (``basic.qos``
with ``global=false`` applies per consumer:
https://www.rabbitmq.com/docs/consumer-prefetch). An open consumer can be sent at most
``p`` deliveries beyond those already in hand, because the broker sends it more only as
the ones it sent are acked (claimed). So with

    open consumers * p + deliveries in hand (claiming or running) <= concurrency

every delivery arrives to a free slot. Keeping that true:

- A slot frees: open consumers again, up to ``CONSUMERS`` and the free slots / ``p``.
- A delivery arrives: one more slot in use. If the sum is now over, cancel the consumer it
  came on and await ``basic.cancel-ok`` *before* the delivery is handed on to be claimed
  and acked: until that ack the broker can send that consumer only what its window still
  allowed when the sum last held, and after the cancel-ok it sends none (AMQP 0-9-1
  ``basic.cancel``: "does not affect already delivered messages, but ... the server will
  not send any more messages for that consumer"). A delivery still on its way to a
  consumer being cancelled arrives and is taken: the sum held before, so there is a slot
  for it. The delivery stays unacked on the channel and is acked normally. (A quorum queue
  instead returns a delivery that reaches the broker's channel process after the cancel:
  rabbit_fifo_client gives back what comes for a consumer it no longer has,
  rabbitmq-server#3729. The worker never sees it; it is delivered again, redelivered, and on
  RabbitMQ 3.10 to 4.2 its ``x-delivery-count`` grows by one.)

Each arrival takes one slot, so the room (free slots / ``p``) shrinks by at most one
consumer per arrival, and cancelling the consumer the delivery came on is always enough.

``p`` (``prefetch_for``) is the claim batch: the deliveries one consumer is sent at once
arrive together and are claimed together, in one statement and one commit (the claim's
group commit, ``store.requests``). It is half the slots per consumer, at most
``MAX_PREFETCH``: larger batches, but a consumer is cancelled once the free slots fall
below ``p`` and reopened only when ``p`` are free again, so a worker runs with between
``concurrency - p`` and ``concurrency`` jobs while the queue is deep, and one consume and
one cancel are paid per batch instead of per job. Short jobs free ``p`` slots in a few
milliseconds; long ones may hold them for minutes, so when fewer than ``p`` slots stay
free for ``TAIL_SECONDS`` the intake fills them one at a time (consumers of prefetch 1,
the channel's ``basic.qos`` set to 1 first), and goes back to batches (cancelling those
consumers, ``basic.qos`` ``p``) once ``p`` slots are free. Every open consumer has the
channel's current prefetch: a reconnect restores them all with it. Below 4 slots ``p`` is
1, the one-at-a-time intake of before.

``--max-jobs`` is the same rule with the deliveries still allowed in place of the free
slots, at ``p`` = 1 (a window of ``p`` could overshoot the limit). Nothing is ever handed
back for lack of a slot, so a message's delivery count (the quorum queue's
``x-delivery-count``, which dead-letters it at the delivery limit) does not grow while it
waits, and work waits in the queue, where any idle worker gets it. The one hand-back left
is on stop: a delivery already on its way when the consumers are cancelled is nacked
(requeued).

Cancel on arrival rather than before an ack: with ``p`` > 1 any ack opens the window, so a
cancel tied to acks would have to come before the ack of *another* delivery (in ``jobs``);
counting every delivery in hand as if already acked keeps the cancel where the delivery
enters. One consumer of ``p`` = 8 at the default concurrency of 16 (between 8 and 16 jobs
running while the queue is deep) against two of ``p`` = 4 (12 to 16): in one interleaved
run of 5 repetitions (BENCHMARKS.md, issue 22), +2% jobs per second, -5% CPU per job,
PostgreSQL round trips per job 1.98 -> 1.53, AMQP methods 4.15 -> 3.76 (a consume and a
cancel per 8 jobs instead of per 4). So one consumer below a concurrency of
``SECOND_CONSUMER_AT``, two from there on, where ``p`` stays at ``MAX_PREFETCH``.

aio-pika's robust queue forgets a consumer as soon as ``cancel`` is called, so a reconnect
restores only the open ones (with the channel's ``basic.qos``, which aio-pika re-applies);
a consume that fails (channel being restored) is retried by ``run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Final

from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, ConsumerTag

from bgworker import faults, handlers
from bgworker import settings as settings_mod
from bgworker.messaging import wire
from bgworker.observe import logs
from bgworker.worker import acking

log = logging.getLogger(__name__)

CONSUMERS: Final = 1  # open at most (never more than the free slots / p) ...
SECOND_CONSUMER_AT: Final = 32  # ... and one more from this concurrency on
MAX_PREFETCH: Final = 8  # the largest claim batch (p)
# Fewer than p slots free for this long: the rest are filled one at a time (prefetch 1).
TAIL_SECONDS: Final = 0.1
RETRY_SECONDS: Final = 1.0
# aio-pika waits for a lost connection to come back before sending a consume or cancel: bound
# it, so a stop during a broker outage (or a delivery's cancel) does not wait for the broker.
RPC_TIMEOUT: Final = 10.0

Deliver = Callable[[AbstractIncomingMessage], Awaitable[None]]


def consumers_for(slots: int) -> int:
    return CONSUMERS + 1 if slots >= SECOND_CONSUMER_AT else CONSUMERS


def slots_for(config: settings_mod.WorkerSettings, registry: handlers.Registry) -> int:
    """Jobs at once: the concurrency, or fewer when every handler is a plain ``def`` (each
    needs a handler thread: a job claimed without one would wait in hand)."""
    if registry.all_sync():
        return min(config.concurrency, config.handler_threads)
    return config.concurrency


def prefetch_for(slots: int, limit: int | None) -> int:
    """``p``: the prefetch of each consumer (the channel's ``basic.qos``), the claim batch."""
    if limit is not None:
        return 1
    return max(1, min(MAX_PREFETCH, slots // (2 * consumers_for(slots))))


class Intake:
    """Counts the slots in use and opens or cancels consumers to match."""

    def __init__(
        self,
        queue: AbstractQueue,
        deliver: Deliver,
        *,
        slots: int,
        limit: int | None,
        stopping: asyncio.Event,
    ) -> None:
        self._queue = queue
        self._deliver = deliver  # starts the job; must not wait for it
        self._slots = slots
        self._consumers = consumers_for(slots)
        self.prefetch = prefetch_for(slots, limit)  # p: the invariant above depends on it
        self._limit = limit  # --max-jobs: deliveries to take in all (duplicates excepted)
        self._stopping = stopping  # the worker's stop event: take nothing more once it is set
        self._busy = 0  # deliveries in hand: being claimed or running
        self._taken = 0
        self._tags: set[ConsumerTag] = set()
        # The channel's prefetch for the next consumers (the pool sets p before consuming);
        # None: none fits the free slots yet. Since when fewer than p were free (the tail).
        self._qos: int | None = self.prefetch
        self._channel_qos = self.prefetch
        self._short_since: float | None = None
        self._closing = 0  # consumers cancelled, cancel-ok not yet back
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        # taken; redelivered (the broker had delivered it before); returned (nacked by the
        # intake: only on stop); opened / cancelled (consumers): for logs and tests.
        self.counts: Counter[str] = Counter()
        # The acks of this channel's deliveries, told of each first (``acking``); its counts
        # ("acks multiple", "acks covered", "acks single") join these.
        self.acks = acking.Acks(self.counts)
        self.peak = 0  # most slots in use at once
        # Fair share (``sharing``): while ``holding()``, a freed slot goes to a parked request
        # (``take``) and no consumer opens for it; ``on_full`` is called when the last slot
        # is taken (the parker opens); ``freed`` is set whenever a slot frees.
        self.holding: Callable[[], bool] = lambda: False
        self.on_full: Callable[[], None] = lambda: None
        self.freed = asyncio.Event()

    @property
    def busy(self) -> int:
        return self._busy

    @property
    def slots(self) -> int:
        return self._slots

    @property
    def consumers(self) -> int:
        return len(self._tags)

    def _free(self) -> int:
        """Deliveries this worker may be sent now: free slots (and the limit's rest)."""
        if self._stopping.is_set():
            return 0
        free = self._slots - self._busy
        if self._limit is not None:
            free = min(free, self._limit - self._taken)
        return max(free, 0)

    def _room(self) -> int:
        """How many consumers may be open now, each with the channel's prefetch."""
        if self.holding():
            return 0  # fair share: freed slots go to parked requests first
        if not self._tags and self._qos is None:
            return 0  # none open, and no prefetch fits yet (see _choose_prefetch)
        return min(self._consumers, self._free() // (self._qos or self.prefetch))

    async def sync(self, arrived_on: ConsumerTag | None = None) -> None:
        """Open or cancel consumers to fit the room. Only these may be cancelled: the one a
        delivery ``arrived_on`` (that delivery is in hand, so the sum still held before it),
        on stop all, and consumers of the tail's prefetch 1 once a batch fits again."""
        async with self._lock:
            if len(self._tags) > self._room():
                if self._stopping.is_set() or self.holding():
                    # Holding: idle consumers closed, their slots go to parked requests once
                    # cancel-ok came (``take`` counts them until then).
                    doomed = set(self._tags)
                elif arrived_on in self._tags:
                    doomed = {arrived_on}
                else:
                    doomed = set()
                await self._cancel(doomed)
            if self._tags and self._qos == 1 < self.prefetch <= self._free():
                # The tail is over: back to batches (after the cancel-oks, whatever was on
                # its way to these consumers is in hand and counted).
                await self._cancel(set(self._tags))
            if not self._tags:
                await self._choose_prefetch()
            while len(self._tags) < self._room():  # a delivery may arrive meanwhile
                async with asyncio.timeout(RPC_TIMEOUT):
                    tag = await self._queue.consume(self._on_message)
                self._tags.add(tag)
                self.counts["opened"] += 1

    async def _cancel(self, doomed: set[ConsumerTag]) -> None:
        failed: Exception | None = None
        for tag in doomed:
            self._tags.discard(tag)  # robust queue: never restored from here on
            self.counts["cancelled"] += 1
            self._closing += 1
            try:
                async with asyncio.timeout(RPC_TIMEOUT):
                    await self._queue.cancel(tag)
            except Exception as exc:  # the others still get theirs
                failed = exc
            finally:
                self._closing -= 1
        if doomed:
            self.freed.set()
        if failed is not None:
            raise failed

    async def _choose_prefetch(self) -> None:
        """With no consumer open: the prefetch the next ones get (``basic.qos`` applies to
        the consumers opened after it, and a reconnect restores every consumer with the
        last one, so all open consumers share one). ``p`` once ``p`` slots are free; with
        fewer free for ``TAIL_SECONDS`` (long jobs hold the slots), 1, so every slot fills;
        else none yet (short jobs free ``p`` slots sooner than that)."""
        free = self._free()
        now = asyncio.get_running_loop().time()
        if free >= self.prefetch:
            want: int | None = self.prefetch
            self._short_since = None
        elif free == 0:
            want, self._short_since = None, None
        else:
            if self._short_since is None:
                self._short_since = now
            want = 1 if now - self._short_since >= TAIL_SECONDS else None
        if want is not None and want != self._channel_qos:
            async with asyncio.timeout(RPC_TIMEOUT):
                await self._queue.channel.set_qos(prefetch_count=want)
            self._channel_qos = want
            self.counts["prefetch set"] += 1
        self._qos = want

    async def run(self) -> None:
        """Side task: open consumers when slots free; retry a consume that failed."""
        while not self._stopping.is_set():
            try:
                await self.sync()
            except Exception as exc:  # channel closed or being restored: next round
                if not faults.report(exc, "intake"):
                    log.warning(
                        "intake: consumers not in step yet (%s); retrying", logs.describe(exc)
                    )
            wait = RETRY_SECONDS if self._short_since is None else TAIL_SECONDS
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._changed.wait()
            self._changed.clear()

    def take(self) -> bool:
        """A slot for a claim without a delivery (fair share), if one is free that no open
        consumer may fill: each open (or closing) consumer may still be sent its prefetch,
        so the flow-control sum above stays within the slots."""
        reserved = (len(self._tags) + self._closing) * self._channel_qos
        free = self._slots - self._busy - reserved
        if self._limit is not None:
            free = min(free, self._limit - self._taken)
        if self._stopping.is_set() or free <= 0:
            return False
        self._busy += 1
        self._taken += 1
        self.peak = max(self.peak, self._busy)
        if self._busy >= self._slots:
            self.on_full()
        return True

    def poke(self) -> None:
        """Look at the room again (``holding`` changed)."""
        self._changed.set()

    def release(self, *, counted: bool = True) -> None:
        """A delivery is done with its slot. ``counted=False`` (a duplicate delivery) does not
        count towards the limit, so another is taken in its place."""
        self._busy -= 1
        if not counted:
            self._taken -= 1
        self._changed.set()
        self.freed.set()

    async def close(self) -> None:
        """After the stop event: cancel every consumer (awaiting the cancel-oks)."""
        self._changed.set()
        await self.sync()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self.acks.arrived(message)  # before any await: in the deliveries' order (acking)
        if wire.redelivered(message):
            self.counts["redelivered"] += 1
        if self._stopping.is_set():
            # On its way before the cancel.
            await self._return(message)
            return
        self._busy += 1
        self._taken += 1
        self.counts["taken"] += 1
        self.peak = max(self.peak, self._busy)
        if self._busy >= self._slots:
            self.on_full()
        try:
            # Over the room now: cancel this consumer before its delivery can be acked.
            await self.sync(arrived_on=message.consumer_tag)
        except Exception as exc:
            # The channel is gone; so is this delivery's ack. The claim still runs the job
            # once, and the redelivery is recognised as a duplicate (see ``jobs._ack``).
            if not faults.report(exc, "intake"):
                log.warning("intake: could not cancel a consumer: %s", logs.describe(exc))
        if self._stopping.is_set():
            self._busy -= 1
            self._taken -= 1
            await self._return(message)
            return
        await self._deliver(message)

    async def _return(self, message: AbstractIncomingMessage) -> None:
        # basic.nack requeue=true: counts towards a quorum queue's delivery limit on RabbitMQ
        # 3.10 to 4.2, not on 4.3+ (which counts only basic.reject and failed deliveries).
        self.counts["returned"] += 1
        with contextlib.suppress(Exception):
            await message.nack(requeue=True)
