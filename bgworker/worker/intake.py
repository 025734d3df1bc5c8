"""Flow control: the work queue is consumed only as far as this worker can start jobs.

A delivery is acknowledged as soon as its claim commits (see ``jobs``), so a prefetch
window no longer counts running jobs: with prefetch = concurrency a busy worker was sent
more deliveries than it had free slots, and held them. Instead the intake opens up to
``CONSUMERS`` consumers on the work queue, each with a prefetch of 1 (``basic.qos`` with
``global=false`` applies per consumer: https://www.rabbitmq.com/docs/consumer-prefetch).
An open consumer can be sent at most one delivery beyond those already in hand, because
the broker sends it the next one only once the one before is acked (claimed). So with

    open consumers + deliveries in hand (claiming or running) <= concurrency

every delivery arrives to a free slot. Keeping that true:

- A slot frees: open consumers again, up to ``CONSUMERS`` and the free slots.
- A delivery arrives: one more slot in use. If the sum is now over, cancel the consumer it
  came on and await ``basic.cancel-ok`` *before* the delivery is handed on to be claimed
  and acked: until that ack the broker cannot send that consumer another, and after the
  cancel-ok it sends none (AMQP 0-9-1 ``basic.cancel``: "does not affect already delivered
  messages, but ... the server will not send any more messages for that consumer"). The
  delivery stays unacked on the channel and is acked normally.

``--max-jobs`` is the same rule with the deliveries still allowed in place of the free
slots. Nothing is ever handed back for lack of a slot, so a message's delivery count (the
quorum queue's ``x-delivery-count``, which dead-letters it at the delivery limit) does not
grow while it waits, and work waits in the queue, where any idle worker gets it. The one
hand-back left is on stop: a delivery already on its way when the consumers are cancelled
is nacked (requeued).

Consumers of prefetch 1 rather than one consumer with a larger prefetch: with prefetch P
the cancel would have to come before the ack of *another* delivery (in ``jobs``), since any
ack opens the window; with prefetch 1 the delivery that fills the last slot is the one
whose ack is held back. One consumer serialises the claims (the next delivery comes only
after the previous claim's commit and ack); two overlap them, but at concurrency 4 they
are cancelled and reopened for most jobs (the sum reaches the limit at 3 busy slots), and
measured no faster while costing more CPU per job. So one consumer below a concurrency of
``SECOND_CONSUMER_AT``, two from there on, where the sum reaches the limit only with all
but one slot busy, so a cancel and re-consume stays rare.

aio-pika's robust queue forgets a consumer as soon as ``cancel`` is called, so a reconnect
restores only the open ones; a consume that fails (channel being restored) is retried by
``run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Final

from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, ConsumerTag

from bgworker import faults
from bgworker.messaging import wire
from bgworker.observe import logs

log = logging.getLogger(__name__)

PREFETCH: Final = 1  # per consumer; the invariant above depends on it
CONSUMERS: Final = 1  # open at most (never more than the free slots) ...
SECOND_CONSUMER_AT: Final = 8  # ... and one more from this concurrency on
RETRY_SECONDS: Final = 1.0
# aio-pika waits for a lost connection to come back before sending a consume or cancel: bound
# it, so a stop during a broker outage (or a delivery's cancel) does not wait for the broker.
RPC_TIMEOUT: Final = 10.0

Deliver = Callable[[AbstractIncomingMessage], Awaitable[None]]


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
        self._consumers = CONSUMERS + 1 if slots >= SECOND_CONSUMER_AT else CONSUMERS
        self._limit = limit  # --max-jobs: deliveries to take in all (duplicates excepted)
        self._stopping = stopping  # the worker's stop event: take nothing more once it is set
        self._busy = 0  # deliveries in hand: being claimed or running
        self._taken = 0
        self._tags: set[ConsumerTag] = set()
        self._closing = 0  # consumers cancelled, cancel-ok not yet back
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        # taken; redelivered (the broker had delivered it before); returned (nacked by the
        # intake: only on stop); opened / cancelled (consumers): for logs and tests.
        self.counts: Counter[str] = Counter()
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
    def consumers(self) -> int:
        return len(self._tags)

    def _room(self) -> int:
        """How many consumers may be open now."""
        if self._stopping.is_set() or self.holding():
            return 0
        room = min(self._consumers, self._slots - self._busy)
        if self._limit is not None:
            room = min(room, self._limit - self._taken)
        return max(room, 0)

    async def sync(self, arrived_on: ConsumerTag | None = None) -> None:
        """Open or cancel consumers to fit the room. Only these may be cancelled: the one a
        delivery ``arrived_on`` (that delivery is in hand, so nothing else is on its way to
        that consumer), and, on stop, all."""
        async with self._lock:
            room = self._room()
            if len(self._tags) > room:
                if self._stopping.is_set() or self.holding():
                    # Holding: idle consumers closed, their slots go to parked requests once
                    # cancel-ok came (``take`` counts them until then).
                    doomed = set(self._tags)
                elif arrived_on in self._tags:
                    doomed = {arrived_on}
                else:
                    doomed = set()
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
            while len(self._tags) < self._room():  # a delivery may arrive meanwhile
                async with asyncio.timeout(RPC_TIMEOUT):
                    tag = await self._queue.consume(self._on_message)
                self._tags.add(tag)
                self.counts["opened"] += 1

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
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RETRY_SECONDS):
                    await self._changed.wait()
            self._changed.clear()

    def take(self) -> bool:
        """A slot for a claim without a delivery (fair share), if one is free that no open
        consumer may fill: the flow-control sum above stays within the slots."""
        free = self._slots - self._busy - len(self._tags) - self._closing
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
