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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from aio_pika.abc import AbstractChannel, AbstractQueue, ExchangeType

REQUESTED_KEY: Final = "file.requested"
# CancelRequested: a queue of its own, so a cancel never waits behind the work backlog (a
# worker takes work only into free slots; it takes cancels whenever they come).
CANCEL_KEY: Final = "request.cancel"
READY_KEY: Final = "file.ready"
FAILED_KEY: Final = "file.failed"
# Quorum queues dead-letter a message redelivered this often (a worker crashing on it each
# time). RabbitMQ 4.x defaults to 20; we set it so 3.x behaves the same.
DELIVERY_LIMIT: Final = 20


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

    def _work_arguments(self) -> dict[str, Any]:
        args: dict[str, Any] = {"x-dead-letter-exchange": self.dead_exchange}
        if self.queue_type == "quorum":
            args["x-queue-type"] = "quorum"
            args["x-delivery-limit"] = DELIVERY_LIMIT
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
        work = await channel.declare_queue(
            self.work_queue, durable=True, arguments=self._work_arguments()
        )
        await work.bind(requests, REQUESTED_KEY)
        await self.declare_cancels(channel)
        return work

    async def declare_cancels(self, channel: AbstractChannel) -> AbstractQueue:
        """The cancel queue, bound to the requests exchange (its exchange declared too, so a
        worker may consume it on a channel of its own)."""
        requests = await channel.declare_exchange(
            self.requests_exchange, ExchangeType.DIRECT, durable=True
        )
        args: dict[str, Any] = {"x-queue-type": "quorum"} if self.queue_type == "quorum" else {}
        cancels = await channel.declare_queue(self.cancel_queue, durable=True, arguments=args)
        await cancels.bind(requests, CANCEL_KEY)
        return cancels

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
        queues = [self.work_queue, self.cancel_queue, self.dead_queue]
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
