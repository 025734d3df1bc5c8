"""The acks of a batch as one ``basic.ack multiple`` (``worker.acking``), on a real broker:
one ack settles the batch, and never a delivery that was not asked to be acked (one still
in hand comes back when the channel closes)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage

from bgworker.worker import acking
from tests.helpers import AMQP_URL, wait_until


@dataclass
class Batch:
    connection: aio_pika.abc.AbstractConnection
    channel: aio_pika.abc.AbstractChannel
    queue: aio_pika.abc.AbstractQueue
    acks: acking.Acks
    got: list[AbstractIncomingMessage]
    sent_acks: list[tuple[int, bool]]  # (delivery tag, multiple) of each basic.ack sent


@pytest.fixture(params=["classic", "quorum"])
async def batch(request: pytest.FixtureRequest) -> AsyncIterator[Batch]:
    """Four deliveries in hand on one channel, each told to ``Acks`` as the intake tells it."""
    name = f"test-acking-{uuid.uuid4().hex[:12]}"
    setup = await aio_pika.connect(AMQP_URL)
    setup_channel = await setup.channel()
    arguments = {"x-queue-type": request.param}
    await setup_channel.declare_queue(name, durable=True, arguments=arguments)
    for i in range(4):
        message = aio_pika.Message(f"m{i}".encode(), message_id=f"m{i}")
        await setup_channel.default_exchange.publish(message, routing_key=name)
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=4)
    queue = await channel.declare_queue(name, durable=True, arguments=arguments)
    acks = acking.Acks()
    got: list[AbstractIncomingMessage] = []

    async def on_message(message: AbstractIncomingMessage) -> None:
        acks.arrived(message)
        got.append(message)

    await queue.consume(on_message)
    await wait_until(lambda: len(got) == 4)
    # What went on the wire: a spy around the real basic.ack (it still sends).
    underlay = await channel.get_underlay_channel()
    sent: list[tuple[int, bool]] = []
    real_ack = underlay.basic_ack

    async def counting_ack(delivery_tag: int, multiple: bool = False, wait: bool = True) -> None:
        sent.append((delivery_tag, multiple))
        await real_ack(delivery_tag, multiple=multiple, wait=wait)

    underlay.basic_ack = counting_ack  # type: ignore[method-assign]
    try:
        yield Batch(connection, channel, queue, acks, got, sent)
    finally:
        await connection.close()
        await setup_channel.queue_delete(name)
        await setup.close()


async def left_in_queue(batch: Batch) -> list[bytes]:
    """Close the batch's channel (what it still holds goes back), then read the queue."""
    await batch.channel.close()
    channel = await batch.connection.channel()
    queue = await channel.declare_queue(batch.queue.name, passive=True)
    bodies = []
    while (message := await queue.get(fail=False, no_ack=True)) is not None:
        bodies.append(message.body)
    return bodies


async def test_a_batch_is_settled_by_one_multiple_ack(batch: Batch) -> None:
    await asyncio.gather(*(batch.acks.ack(m) for m in batch.got))
    tags = [m.delivery_tag for m in batch.got]
    assert batch.sent_acks == [(max(t for t in tags if t is not None), True)]
    assert batch.acks.counts == {"acks multiple": 1, "acks covered": 4}
    # aio-pika's own flag, which settling reads and which stops a second ack going out.
    assert all(m.processed for m in batch.got)
    with pytest.raises(aio_pika.exceptions.MessageProcessError):
        await batch.got[0].ack()
    assert await left_in_queue(batch) == []


async def test_a_delivery_still_in_hand_is_never_covered(batch: Batch) -> None:
    first, *rest = batch.got
    await asyncio.gather(*(batch.acks.ack(m) for m in rest))
    # The first is older than the others and not asked: a multiple ack would settle it.
    assert all(not multiple for _, multiple in batch.sent_acks)
    assert batch.acks.counts == {"acks single": 3}
    assert not first.processed
    assert await left_in_queue(batch) == [first.body]


async def test_the_floor_moves_past_a_delivery_settled_another_way(batch: Batch) -> None:
    first, *rest = batch.got
    await first.nack(requeue=True)  # as the intake hands one back on stop
    await asyncio.gather(*(batch.acks.ack(m) for m in rest))
    assert [multiple for _, multiple in batch.sent_acks] == [True]
    assert batch.acks.counts == {"acks multiple": 1, "acks covered": 3}
    assert await left_in_queue(batch) == [first.body]  # requeued by its nack, not acked


async def test_acks_asked_apart_go_out_apart(batch: Batch) -> None:
    """Not asked in the same turn: each goes out alone (nothing waits for the others)."""
    for message in batch.got:
        await batch.acks.ack(message)
    assert [multiple for _, multiple in batch.sent_acks] == [False] * 4
    assert await left_in_queue(batch) == []
