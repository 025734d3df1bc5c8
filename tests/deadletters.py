"""Reading a test namespace's dead-letter queue."""

from __future__ import annotations

import aio_pika

from bgworker import topology
from tests.conftest import wait_until


class DeadLetters:
    """Reads ``{namespace}.dead`` with basic.get; messages are kept in arrival order."""

    def __init__(self, channel: aio_pika.abc.AbstractChannel, namespace: str) -> None:
        self.channel = channel
        self.name = topology.Topology(namespace).dead_queue
        self.seen: list[aio_pika.abc.AbstractIncomingMessage] = []

    async def wait_for(self, n: int) -> list[aio_pika.abc.AbstractIncomingMessage]:
        queue = await self.channel.get_queue(self.name, ensure=False)

        async def enough() -> bool:
            message = await queue.get(no_ack=True, fail=False)
            if message is not None:
                self.seen.append(message)
            return len(self.seen) >= n

        await wait_until(enough)
        return self.seen

    def by_body(self, body: bytes) -> aio_pika.abc.AbstractIncomingMessage:
        [message] = [m for m in self.seen if m.body == body]
        return message
