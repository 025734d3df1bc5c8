"""Flow control: the work queue's consumer is open only while this worker can start a job.

A delivery is acknowledged as soon as its claim commits (see ``jobs``), so the broker's
prefetch window no longer counts running jobs: with prefetch = concurrency a busy worker
was sent more deliveries than it had free slots, and held them. Instead:

- The consumer channel has a prefetch of 1 (per consumer, ``basic.qos`` with
  ``global=false``: https://www.rabbitmq.com/docs/consumer-prefetch). The broker sends the
  next delivery only once the one before it is acknowledged, i.e. claimed.
- A delivery therefore arrives only when a slot is free. If taking it fills the last slot
  (or reaches ``--max-jobs``), the consumer is cancelled and the ``basic.cancel-ok`` awaited
  *before* the delivery is handed on to be claimed and acked: until that ack the broker
  cannot send another, and after the cancel-ok it sends none (AMQP 0-9-1 ``basic.cancel``:
  "does not affect already delivered messages, but ... the server will not send any more
  messages for that consumer"). The delivery in hand stays unacked on the channel and is
  acked normally.
- When a slot frees, the consumer is opened again.

So nothing is ever handed back for lack of a slot, a message's delivery count (the quorum
queue's ``x-delivery-count``, which dead-letters at the delivery limit) never grows while it
waits, and work waits in the queue, where an idle worker gets it. The one hand-back left is
on stop: a delivery that arrived while the consumer was being cancelled is nacked (requeued).

aio-pika's robust queue forgets a consumer as soon as ``cancel`` is called, so a reconnect
restores the consumer only while it is open; a consume that fails (channel being restored)
is retried by ``run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Final

from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, ConsumerTag

log = logging.getLogger(__name__)

PREFETCH: Final = 1
RETRY_SECONDS: Final = 1.0

Deliver = Callable[[AbstractIncomingMessage], Awaitable[None]]


class Intake:
    """Counts the slots in use and opens or cancels the consumer to match."""

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
        self._limit = limit  # --max-jobs: deliveries to take in all (duplicates excepted)
        self._stopping = stopping  # the worker's stop event: take nothing more once it is set
        self._busy = 0  # deliveries in hand: being claimed or running
        self._taken = 0
        self._tag: ConsumerTag | None = None
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        # taken, redelivered (a delivery the broker had delivered before), returned (nacked
        # by the intake: only on stop), paused / resumed: for logs and tests.
        self.counts: Counter[str] = Counter()
        self.peak = 0  # most slots in use at once

    @property
    def busy(self) -> int:
        return self._busy

    @property
    def consuming(self) -> bool:
        return self._tag is not None

    def _wanted(self) -> bool:
        return (
            not self._stopping.is_set()
            and self._busy < self._slots
            and (self._limit is None or self._taken < self._limit)
        )

    async def sync(self) -> None:
        """Open or cancel the consumer so that it is open exactly while a slot is free."""
        async with self._lock:
            wanted = self._wanted()
            if wanted and self._tag is None:
                self._tag = await self._queue.consume(self._on_message)
                self.counts["resumed"] += 1
            elif not wanted and self._tag is not None:
                tag, self._tag = self._tag, None  # robust queue: never restored from here on
                await self._queue.cancel(tag)
                self.counts["paused"] += 1

    async def run(self) -> None:
        """Side task: open the consumer when a slot frees; retry a consume that failed."""
        while not self._stopping.is_set():
            try:
                await self.sync()
            except Exception as exc:  # channel closed or being restored: next round
                log.warning("intake: consumer not in step yet (%s); retrying", exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RETRY_SECONDS):
                    await self._changed.wait()
            self._changed.clear()

    def release(self, *, counted: bool = True) -> None:
        """A delivery is done with its slot. ``counted=False`` (a duplicate delivery) does not
        count towards the limit, so another is taken in its place."""
        self._busy -= 1
        if not counted:
            self._taken -= 1
        self._changed.set()

    async def close(self) -> None:
        """After the stop event: cancel the consumer (awaiting the cancel-ok)."""
        self._changed.set()
        await self.sync()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        redelivered = message.redelivered or bool((message.headers or {}).get("x-delivery-count"))
        if redelivered:
            self.counts["redelivered"] += 1
        if not self._wanted():
            # Only on stop: the delivery was on its way before the cancel.
            await self._return(message)
            return
        self._busy += 1
        self._taken += 1
        self.counts["taken"] += 1
        self.peak = max(self.peak, self._busy)
        try:
            # The last slot (or the last job allowed): cancel before this delivery can be
            # acked, so the broker cannot send another meanwhile.
            await self.sync()
        except Exception as exc:
            # The channel is gone; so is this delivery's ack. The claim still runs the job
            # once, and the redelivery is recognised as a duplicate (see ``jobs._ack``).
            log.warning("intake: could not pause the consumer: %s", exc)
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
