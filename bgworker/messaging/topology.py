"""Every exchange, queue and binding bgworker uses, declared in one place.

Routes (``ns`` is the configured namespace)::

    producers --file.requested--> ns.requests --> ns.work --> workers
    producers --request.cancel--> ns.requests --> ns.cancel --> every worker's cancel consumer
    workers  --retry.Nms--> ns.retry --> ns.retry.Nms (TTL) --dead-letter--> ns.requests
    workers  --dead--> ns.dead (fanout) --> ns.dead (queue, reason headers)
    workers  --file.ready|file.failed--> ns.events (topic) --> other services' queues

One delay queue per retry tier, because RabbitMQ only expires messages at the head of a
queue: a 5 s retry behind a 5 min one would wait 5 min in a single mixed-TTL queue
(https://www.rabbitmq.com/docs/ttl#per-message-ttl-caveats).

With ``queue_type`` quorum (the default) every queue is replicated, so the loss of any one
node of a cluster loses no message and blocks nothing: the work queue, the dead letters
(``ns.dead.quorum``) and the retry delays (``ns.retry.Nms.quorum``: quorum queues expire
messages by ``x-message-ttl`` from RabbitMQ 3.10, and dead-letter them at-least-once, which
needs ``x-overflow: reject-publish``). Those two used to be classic queues named ``ns.dead``
and ``ns.retry.Nms``; a queue's type cannot change, so the replicated ones have new names
and ``declaring`` retires the old ones without losing a message (docs/operating.md,
"Upgrading to replicated dead-letter and retry queues").

Exchanges are cluster-wide metadata that any running node serves; a queue's declaration
needs the queue's own members. So a connection declares on its robust channel only the
exchanges and, for a worker, the work queue it consumes; the rest is declared on a
throwaway channel (``declaring.Declarations``), and when that fails it is retried later
rather than blocking the connection.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Final

import aiormq
from aio_pika.abc import AbstractChannel, AbstractQueue, ExchangeType

log = logging.getLogger(__name__)

REQUESTED_KEY: Final = "file.requested"
# BundleRequested: into the work queue beside the requests; the worker that takes one records
# the bundle and publishes its parts as requests (docs/bundles.md).
BUNDLE_KEY: Final = "bundle.requested"
# CancelRequested: a queue of its own, so a cancel never waits behind the work backlog (a
# worker takes work only into free slots; it takes cancels whenever they come).
CANCEL_KEY: Final = "request.cancel"
READY_KEY: Final = "file.ready"
FAILED_KEY: Final = "file.failed"
# Quorum queues dead-letter a message redelivered this often (a worker crashing on it each
# time). RabbitMQ 4.x defaults to 20; we set it so 3.x behaves the same.
DELIVERY_LIMIT: Final = 20
# The dead letters are read by returning them (a scan takes them unacknowledged and closes
# its channel), and a quorum queue counts each return as a delivery; RabbitMQ 4.x drops a
# message past a default limit of 20. So the dead-letter queue sets a limit no scanning
# reaches (-1, "none", is 4.x only: 3.x takes a negative limit as 0, dropping every letter
# at its first read).
DEAD_DELIVERY_LIMIT: Final = 1_000_000
QUORUM_SUFFIX: Final = ".quorum"
# x-max-priority of a classic work queue: low, normal and high (wire.PRIORITIES: 0, 1, 5;
# a priority above the maximum counts as the maximum). Few levels: each costs the queue.
MAX_PRIORITY: Final = 2


@dataclass(frozen=True)
class Topology:
    namespace: str
    retry_delays_seconds: tuple[float, ...] = (5.0, 30.0, 300.0)
    queue_type: str = "quorum"

    @property
    def quorum(self) -> bool:
        return self.queue_type == "quorum"

    @property
    def requests_exchange(self) -> str:
        return f"{self.namespace}.requests"

    @property
    def work_queue(self) -> str:
        return f"{self.namespace}.work"

    @property
    def cancel_queue(self) -> str:
        return f"{self.namespace}.cancel"

    @property
    def retry_exchange(self) -> str:
        return f"{self.namespace}.retry"

    @property
    def dead_exchange(self) -> str:
        return f"{self.namespace}.dead"

    @property
    def dead_queue(self) -> str:
        return self.classic_dead_queue + (QUORUM_SUFFIX if self.quorum else "")

    @property
    def classic_dead_queue(self) -> str:
        """The dead-letter queue's name before it was replicated (and with classic)."""
        return f"{self.namespace}.dead"

    @property
    def events_exchange(self) -> str:
        return f"{self.namespace}.events"

    # Retry queues are named by their delay: changing the configured tiers declares new
    # queues instead of failing on a queue whose x-message-ttl differs (PRECONDITION_FAILED).
    def retry_queue(self, delay_seconds: float) -> str:
        return self.classic_retry_queue(delay_seconds) + (QUORUM_SUFFIX if self.quorum else "")

    def classic_retry_queue(self, delay_seconds: float) -> str:
        """A retry queue's name before it was replicated (and with classic)."""
        return f"{self.namespace}.retry.{int(delay_seconds * 1000)}ms"

    @staticmethod
    def retry_key(delay_seconds: float) -> str:
        return f"retry.{int(delay_seconds * 1000)}ms"

    def retry_delay(self, attempt: int) -> float:
        """The delay before the attempt after failed attempt ``attempt`` (1-based)."""
        return self.retry_delays_seconds[min(attempt, len(self.retry_delays_seconds)) - 1]

    @property
    def tiers(self) -> list[float]:
        return sorted(set(self.retry_delays_seconds))

    def _work_arguments(self, *, priorities: bool = True) -> dict[str, Any]:
        args: dict[str, Any] = {"x-dead-letter-exchange": self.dead_exchange}
        if self.quorum:
            args["x-queue-type"] = "quorum"
            args["x-delivery-limit"] = DELIVERY_LIMIT
        elif priorities:
            # Classic queues serve priorities only when declared with a maximum (quorum
            # queues of RabbitMQ 4 always do, with two levels; those of 3.x never do).
            args["x-max-priority"] = MAX_PRIORITY
        return args

    def _dead_arguments(self) -> dict[str, Any]:
        if not self.quorum:
            return {}
        return {"x-queue-type": "quorum", "x-delivery-limit": DEAD_DELIVERY_LIMIT}

    def _retry_arguments(self, delay: float) -> dict[str, Any]:
        args: dict[str, Any] = {
            "x-message-ttl": int(delay * 1000),
            "x-dead-letter-exchange": self.requests_exchange,
            "x-dead-letter-routing-key": REQUESTED_KEY,
        }
        if self.quorum:
            # At-least-once: the queue keeps an expired message until the requests exchange
            # has routed it (the default, at-most-once, drops it if that fails, e.g. while
            # the work queue has no leader). It needs reject-publish (3.10+).
            args["x-queue-type"] = "quorum"
            args["x-dead-letter-strategy"] = "at-least-once"
            args["x-overflow"] = "reject-publish"
        return args

    async def declare_exchanges(self, channel: AbstractChannel) -> None:
        """All four exchanges: cluster-wide metadata, served by any running node. All a
        producer needs to publish (``mandatory`` tells it when no queue took a message)."""
        await channel.declare_exchange(self.requests_exchange, ExchangeType.DIRECT, durable=True)
        await channel.declare_exchange(self.dead_exchange, ExchangeType.FANOUT, durable=True)
        await channel.declare_exchange(self.retry_exchange, ExchangeType.DIRECT, durable=True)
        await channel.declare_exchange(self.events_exchange, ExchangeType.TOPIC, durable=True)

    async def declare_work(self, channel: AbstractChannel) -> AbstractQueue:
        """The work queue, bound. Returns it: consume from this object, since on a robust
        channel only declared queues have their consumers restored after a reconnect."""
        try:
            work = await channel.declare_queue(
                self.work_queue, durable=True, arguments=self._work_arguments()
            )
        except aiormq.exceptions.ChannelPreconditionFailed:
            if self.quorum:
                raise
            # A classic work queue declared before priorities existed: a queue's arguments
            # cannot change, so it stays FIFO (the broker closed the channel: reopen it).
            log.warning(
                "%s was declared without x-max-priority: request priorities are ignored "
                "until it is drained, deleted and declared again",
                self.work_queue,
            )
            await channel.reopen()
            work = await channel.declare_queue(
                self.work_queue, durable=True, arguments=self._work_arguments(priorities=False)
            )
        await work.bind(self.requests_exchange, REQUESTED_KEY)
        await work.bind(self.requests_exchange, BUNDLE_KEY)
        return work

    async def declare_side_queues(self, channel: AbstractChannel, *, retry: bool = True) -> None:
        """The dead-letter and (unless not ``retry``: a producer does not know the tiers)
        retry queues, bound (on a throwaway channel: see the module doc)."""
        await self.declare_dead_queue(channel)
        for delay in self.tiers if retry else []:
            await self.declare_retry_queue(channel, delay)

    async def declare_dead_queue(self, channel: AbstractChannel) -> None:
        dead = await channel.declare_queue(
            self.dead_queue, durable=True, arguments=self._dead_arguments()
        )
        await dead.bind(self.dead_exchange, "")

    async def declare_retry_queue(self, channel: AbstractChannel, delay: float) -> None:
        queue = await channel.declare_queue(
            self.retry_queue(delay), durable=True, arguments=self._retry_arguments(delay)
        )
        await queue.bind(self.retry_exchange, self.retry_key(delay))

    async def declare_cancels(self, channel: AbstractChannel) -> AbstractQueue:
        """The cancel queue, bound (its exchange declared too): a worker declares it on the
        robust channel it consumes it on, whose consumer is then restored after a
        reconnect, as the work queue's."""
        await channel.declare_exchange(self.requests_exchange, ExchangeType.DIRECT, durable=True)
        args: dict[str, Any] = {"x-queue-type": "quorum"} if self.quorum else {}
        cancels = await channel.declare_queue(self.cancel_queue, durable=True, arguments=args)
        await cancels.bind(self.requests_exchange, CANCEL_KEY)
        return cancels

    async def declare(self, channel: AbstractChannel) -> AbstractQueue:
        """Everything on one channel, idempotent (redeclaring with the same arguments is a
        no-op): for tests and tools; a connection uses ``declaring.Declarations``."""
        await self.declare_exchanges(channel)
        await self.declare_side_queues(channel)
        await self.declare_cancels(channel)
        return await self.declare_work(channel)

    async def delete(self, channel: AbstractChannel) -> None:
        """Remove everything ``declare`` made, and the classic queues of before (tests,
        uninstall)."""
        queues = {self.work_queue, self.cancel_queue, self.dead_queue, self.classic_dead_queue}
        for delay in set(self.retry_delays_seconds):
            queues |= {self.retry_queue(delay), self.classic_retry_queue(delay)}
        for name in sorted(queues):
            await channel.queue_delete(name)
        for name in (
            self.requests_exchange,
            self.retry_exchange,
            self.dead_exchange,
            self.events_exchange,
        ):
            await channel.exchange_delete(name)
