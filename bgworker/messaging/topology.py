"""Every exchange, queue and binding bgworker uses, declared in one place.

Routes (``ns`` is the configured namespace)::

    producers --file.requested--> ns.requests --> ns.work --> workers
    workers  --retry.Nms--> ns.retry --> ns.retry.Nms (TTL) --dead-letter--> ns.requests
    workers  --dead--> ns.dead (fanout) --> ns.dead (queue, reason headers)
    workers  --file.ready|file.failed--> ns.events (topic) --> other services' queues

One delay queue per retry tier, because RabbitMQ only expires messages at the head of a
queue: a 5 s retry behind a 5 min one would wait 5 min in a single mixed-TTL queue
(https://www.rabbitmq.com/docs/ttl#per-message-ttl-caveats).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Final

import aiormq
from aio_pika.abc import AbstractChannel, AbstractQueue, ExchangeType

log = logging.getLogger(__name__)

REQUESTED_KEY: Final = "file.requested"
READY_KEY: Final = "file.ready"
FAILED_KEY: Final = "file.failed"
# Quorum queues dead-letter a message redelivered this often (a worker crashing on it each
# time). RabbitMQ 4.x defaults to 20; we set it so 3.x behaves the same.
DELIVERY_LIMIT: Final = 20
# x-max-priority of a classic work queue: low, normal and high (wire.PRIORITIES: 0, 1, 5;
# a priority above the maximum counts as the maximum). Few levels: each costs the queue.
MAX_PRIORITY: Final = 2


@dataclass(frozen=True)
class Topology:
    namespace: str
    retry_delays_seconds: tuple[float, ...] = (5.0, 30.0, 300.0)
    queue_type: str = "quorum"

    @property
    def requests_exchange(self) -> str:
        return f"{self.namespace}.requests"

    @property
    def work_queue(self) -> str:
        return f"{self.namespace}.work"

    @property
    def retry_exchange(self) -> str:
        return f"{self.namespace}.retry"

    @property
    def dead_exchange(self) -> str:
        return f"{self.namespace}.dead"

    @property
    def dead_queue(self) -> str:
        return f"{self.namespace}.dead"

    @property
    def events_exchange(self) -> str:
        return f"{self.namespace}.events"

    # Retry queues are named by their delay: changing the configured tiers declares new
    # queues instead of failing on a queue whose x-message-ttl differs (PRECONDITION_FAILED).
    def retry_queue(self, delay_seconds: float) -> str:
        return f"{self.namespace}.retry.{int(delay_seconds * 1000)}ms"

    @staticmethod
    def retry_key(delay_seconds: float) -> str:
        return f"retry.{int(delay_seconds * 1000)}ms"

    def retry_delay(self, attempt: int) -> float:
        """The delay before the attempt after failed attempt ``attempt`` (1-based)."""
        return self.retry_delays_seconds[min(attempt, len(self.retry_delays_seconds)) - 1]

    def _work_arguments(self, *, priorities: bool = True) -> dict[str, Any]:
        args: dict[str, Any] = {"x-dead-letter-exchange": self.dead_exchange}
        if self.queue_type == "quorum":
            args["x-queue-type"] = "quorum"
            args["x-delivery-limit"] = DELIVERY_LIMIT
        elif priorities:
            # Classic queues serve priorities only when declared with a maximum (quorum
            # queues of RabbitMQ 4 always do, with two levels; those of 3.x never do).
            args["x-max-priority"] = MAX_PRIORITY
        return args

    async def declare_intake(self, channel: AbstractChannel) -> AbstractQueue:
        """The part producers need: requests exchange -> work queue (and its dead letters).
        Returns the work queue: consume from this object, since on a robust channel only
        declared queues have their consumers restored after a reconnect."""
        requests = await channel.declare_exchange(
            self.requests_exchange, ExchangeType.DIRECT, durable=True
        )
        dead = await channel.declare_exchange(self.dead_exchange, ExchangeType.FANOUT, durable=True)
        dead_queue = await channel.declare_queue(self.dead_queue, durable=True)
        await dead_queue.bind(dead, "")
        try:
            work = await channel.declare_queue(
                self.work_queue, durable=True, arguments=self._work_arguments()
            )
        except aiormq.exceptions.ChannelPreconditionFailed:
            if self.queue_type == "quorum":
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
        await work.bind(requests, REQUESTED_KEY)
        return work

    async def declare(self, channel: AbstractChannel) -> AbstractQueue:
        """Everything; idempotent (redeclaring with the same arguments is a no-op)."""
        work = await self.declare_intake(channel)
        retry = await channel.declare_exchange(
            self.retry_exchange, ExchangeType.DIRECT, durable=True
        )
        for delay in sorted(set(self.retry_delays_seconds)):
            queue = await channel.declare_queue(
                self.retry_queue(delay),
                durable=True,
                arguments={
                    "x-message-ttl": int(delay * 1000),
                    "x-dead-letter-exchange": self.requests_exchange,
                    "x-dead-letter-routing-key": REQUESTED_KEY,
                },
            )
            await queue.bind(retry, self.retry_key(delay))
        await channel.declare_exchange(self.events_exchange, ExchangeType.TOPIC, durable=True)
        return work

    async def delete(self, channel: AbstractChannel) -> None:
        """Remove everything ``declare`` made (tests, uninstall)."""
        queues = [self.work_queue, self.dead_queue]
        queues += [self.retry_queue(d) for d in set(self.retry_delays_seconds)]
        for name in queues:
            await channel.queue_delete(name)
        for name in (
            self.requests_exchange,
            self.retry_exchange,
            self.dead_exchange,
            self.events_exchange,
        ):
            await channel.exchange_delete(name)
