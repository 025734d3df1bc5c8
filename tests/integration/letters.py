"""What the dead-letter tests share: the `bgworker` command as a subprocess, queue depths,
draining a queue, and letters made by the real worker."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import aio_pika

from bgworker import store
from bgworker.messaging import broker
from tests.helpers import Publish, wait_for_status, wait_until

CliResult = tuple[int, str, str]
# cli(*argv, stdin=..., terminal=..., **BGWORKER_* env) -> (exit code, stdout, stderr)
Cli = Callable[..., Awaitable[CliResult]]


async def depth(channel: aio_pika.abc.AbstractChannel, name: str) -> int:
    return await broker.queue_depth(channel, name)


async def wait_depth(channel: aio_pika.abc.AbstractChannel, name: str, n: int) -> None:
    async def reached() -> bool:
        return await depth(channel, name) == n

    await wait_until(reached)


async def drain(
    channel: aio_pika.abc.AbstractChannel, name: str
) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Take every message out of a queue, for good, in queue order."""
    queue = await channel.get_queue(name, ensure=False)
    taken = []
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        taken.append(message)
    return taken


async def make_letters(
    db: store.Store,
    amqp: aio_pika.abc.AbstractChannel,
    dead: str,
    publish: Publish,
    file_type: str,
    n: int,
) -> list[uuid.UUID]:
    before = await depth(amqp, dead)
    ids = [(await publish(file_type, {"n": i})).id for i in range(n)]
    for request_id in ids:
        await wait_for_status(db, request_id, "failed")
    await wait_depth(amqp, dead, before + n)
    return ids
