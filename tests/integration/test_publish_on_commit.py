"""Publishing on commit (issue 24, part 2), on real PostgreSQL and RabbitMQ: a Django
producer in a process of its own (tests/producer_app.py). A rolled-back transaction
publishes nothing; a committed one is published exactly once, even when its process is
killed (SIGKILL) the instant after the commit (the relay publishes it), and even when the
relay itself dies between the broker's confirm and its own commit (the duplicate it then
publishes is dropped by id: the file is built once)."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.contract import events
from bgworker.messaging import publisher, topology
from bgworker.ops import relay
from bgworker.producing import outbox
from tests.helpers import AMQP_URL, REPO, StartWorker, settings_env, wait_for_status, wait_until

pytestmark = pytest.mark.usefixtures("amqp")


@pytest.fixture
async def orders(db: store.Store) -> store.Store:
    """The producer's own table, in the same database as the outbox."""
    await db.pool.execute("CREATE TABLE app_orders (request_id uuid PRIMARY KEY)")
    return db


@pytest.fixture
async def published(
    settings: settings_mod.Settings, amqp: aio_pika.abc.AbstractChannel
) -> AsyncIterator[aio_pika.abc.AbstractQueue]:
    """A queue that gets a copy of every FileRequested published in the namespace."""
    queue = await amqp.declare_queue(f"{settings.namespace}.copy", exclusive=True)
    await queue.bind(topology.Topology(settings.namespace).requests_exchange, "file.requested")
    yield queue


async def drain(queue: aio_pika.abc.AbstractQueue) -> list[str]:
    ids = []
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        ids.append(json.loads(message.body)["id"])
    return ids


async def producer(settings: settings_mod.Settings, mode: str) -> tuple[int, uuid.UUID]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.producer_app",
        mode,
        cwd=REPO,
        env=settings_env(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    assert out.strip(), err.decode()
    return proc.returncode, uuid.UUID(out.decode().split()[0])


async def relay_once(settings: settings_mod.Settings, db: store.Store) -> int:
    async with publisher.Publisher(
        AMQP_URL, namespace=settings.namespace, queue_type=settings.queue_type
    ) as pub:
        return await relay.Relay(db, pub).once()


async def order_exists(db: store.Store, request_id: uuid.UUID) -> bool:
    found = await db.pool.fetchval("SELECT 1 FROM app_orders WHERE request_id = $1", request_id)
    return bool(found)


async def test_a_committed_event_is_published_once_though_its_producer_died_at_commit(
    settings: settings_mod.Settings,
    orders: store.Store,
    published: aio_pika.abc.AbstractQueue,
    start_worker: StartWorker,
) -> None:
    code, request_id = await producer(settings, "outbox-commit-kill")
    assert code == -signal.SIGKILL
    assert await order_exists(orders, request_id)  # the producer's own change committed
    assert await drain(published) == []  # and nothing was published by the producer
    assert await relay_once(settings, orders) == 1
    assert await relay_once(settings, orders) == 0  # published once, marked
    assert await drain(published) == [str(request_id)]
    await start_worker()
    row = await wait_for_status(orders, request_id, "ready")
    assert row.attempts == 1


@pytest.mark.parametrize("mode", ["outbox-rollback", "on-commit-rollback"])
async def test_a_rolled_back_transaction_publishes_nothing(
    settings: settings_mod.Settings,
    orders: store.Store,
    published: aio_pika.abc.AbstractQueue,
    mode: str,
) -> None:
    code, request_id = await producer(settings, mode)
    assert code == 0
    assert not await order_exists(orders, request_id)
    assert await relay_once(settings, orders) == 0
    assert await drain(published) == []
    count = await orders.pool.fetchval("SELECT count(*) FROM bgworker_producer_outbox")
    assert count == 0


async def test_on_commit_publishes_once_after_the_commit(
    settings: settings_mod.Settings,
    orders: store.Store,
    published: aio_pika.abc.AbstractQueue,
) -> None:
    code, request_id = await producer(settings, "on-commit")
    assert code == 0
    assert await order_exists(orders, request_id)
    await wait_until(lambda: _one(published, request_id))


async def _one(queue: aio_pika.abc.AbstractQueue, request_id: uuid.UUID) -> bool:
    got = await drain(queue)
    assert got in ([], [str(request_id)])
    return bool(got)


async def test_a_relay_that_dies_before_marking_publishes_again_and_the_file_is_built_once(
    settings: settings_mod.Settings,
    orders: store.Store,
    published: aio_pika.abc.AbstractQueue,
    start_worker: StartWorker,
) -> None:
    event = events.FileRequested(id=uuid.uuid4(), file_type="blob", criteria={"size": 32})
    async with orders.pool.acquire() as conn, conn.transaction():
        await outbox.enqueue_async(conn, event)
        await outbox.enqueue_async(conn, event)  # twice: one row
    async with publisher.Publisher(AMQP_URL, namespace=settings.namespace) as pub:

        async def publish_then_die(request_id: uuid.UUID, body: dict[str, Any]) -> None:
            await pub.publish_recorded(body, request_id)
            raise KeyboardInterrupt  # the crash: after the broker's confirm, before the commit

        with pytest.raises(KeyboardInterrupt):
            await orders.producer_outbox.relay_batch(10, publish_then_die)
    assert await relay_once(settings, orders) == 1  # not marked: published again
    assert await drain(published) == [str(event.id), str(event.id)]
    worker = await start_worker()
    row = await wait_for_status(orders, event.id, "ready")
    await wait_until(lambda: worker.outcomes["duplicate"] == 1)
    assert row.attempts == 1 and worker.outcomes["ready"] == 1
