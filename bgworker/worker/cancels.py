"""Producers' cancels: every worker consumes ``ns.cancel`` (``CancelRequested``).

A cancel has a queue of its own and a consumer that is not bound to free job slots, so it
is applied within a round trip of its arrival even when every slot is busy and the work
queue holds a backlog. Applying it is one statement (``Requests.cancel_or_placeholder``):
a queued or retrying request ends cancelled, a running one is flagged and its worker stops
the handler at the next lease renewal (cancel wins over whatever the handler then does),
and a cancel for an id not recorded yet records a placeholder that the request, when it
comes, is never claimed over. Idempotent, so a redelivered cancel changes nothing.

A body that is not a ``CancelRequested`` is logged, counted and acknowledged: there is no
request to record it on, and dead-lettering it would put a non-request in ``ns.dead``,
which ``bgworker dlq replay`` publishes as a request. A database outage hands the message
back after a pause (the broker redelivers it), so no cancel is lost to it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from bgworker import faults, store
from bgworker.contract import events
from bgworker.messaging import broker, topology
from bgworker.observe import metrics

log = logging.getLogger(__name__)

# Cancels in flight per worker: each is one short statement.
PREFETCH: Final = 16
# A cancel that met a database outage goes back to the queue after this pause.
OUTAGE_PAUSE_SECONDS: Final = 1.0


async def start(
    db: store.Store,
    connection: AbstractRobustConnection,
    topo: topology.Topology,
    stopping: asyncio.Event,
) -> asyncio.Task[None]:
    """The worker's side task, on a channel of its own (so no job's channel delays it)."""
    cancels = Cancels(db, await broker.open_channel(connection), topo)
    return asyncio.create_task(cancels.run(stopping), name="producer-cancels")


class Cancels:
    def __init__(self, db: store.Store, channel: AbstractChannel, topo: topology.Topology) -> None:
        self.db = db
        self.channel = channel
        self.topology = topo

    async def run(self, stopping: asyncio.Event) -> None:
        """Consume until ``stopping`` is set (a side task of the worker)."""
        await self.channel.set_qos(prefetch_count=PREFETCH)
        # Declared on this channel: a robust channel restores the consumers of the queues
        # it declared after a reconnect.
        queue = await self.topology.declare_cancels(self.channel)
        tag = await queue.consume(self.handle)
        try:
            await stopping.wait()
        finally:
            if not self.channel.is_closed:
                try:
                    await queue.cancel(tag)
                except Exception as exc:  # the channel went with the broker: nothing to cancel
                    log.debug("cancel consumer: %s", exc)

    async def handle(self, message: AbstractIncomingMessage) -> None:
        try:
            cancel = events.parse_cancel_requested(message.body)
        except events.InvalidEventError as exc:
            log.warning("a CancelRequested was refused and dropped: %s", exc)
            metrics.CANCELS.labels("invalid").inc()
            await message.ack()
            return
        try:
            result = await self.db.requests.cancel_or_placeholder(cancel.id)
        except Exception as exc:
            if not faults.is_infrastructure(exc):
                raise
            log.warning("cancel of %s waits for PostgreSQL: %s", cancel.id, exc)
            await asyncio.sleep(OUTAGE_PAUSE_SECONDS)
            await message.nack(requeue=True)
            return
        outcome = (
            "before_request"
            if result.placeholder
            else "applied"
            if result.changed
            else "not_cancellable"
        )
        metrics.CANCELS.labels(outcome).inc()
        log.info("request %s: cancel from a producer: %s (%s)", cancel.id, outcome, result.status)
        await message.ack()
