"""Publishing FileRequested: the sync facade for code without an event loop, and refusals."""

from __future__ import annotations

import asyncio
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import aio_pika
import pytest

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.contract import events
from bgworker.messaging import broker, publisher, topology
from tests.helpers import AMQP_URL, StartWorker, wait_for_status, wait_until


def _request(**fields: object) -> events.FileRequested:
    return events.FileRequested(
        id=uuid.uuid4(),
        file_type="blob",
        criteria={"size": 2048, "seed": 9},
        filename="b.bin",
        **fields,
    )


async def test_sync_publisher_from_a_thread_without_a_loop(
    settings: settings_mod.Settings, db: store.Store, start_worker: StartWorker
) -> None:
    await start_worker()
    first, second = _request(), _request()
    seen: dict[str, object] = {}

    def wsgi_view() -> None:
        # What a Django/Flask view does: no running loop in this thread.
        with pytest.raises(RuntimeError):
            asyncio.get_running_loop()
        seen["thread"] = threading.current_thread().name
        with publisher.SyncPublisher(AMQP_URL, namespace=settings.namespace) as pub:
            pub.publish(first)
            pub.publish(second)

    await asyncio.to_thread(wsgi_view)
    assert seen["thread"] != threading.current_thread().name
    for event in (first, second):
        row = await wait_for_status(db, event.id, "ready")
        assert row.size_bytes == 2048


async def test_sync_publisher_is_shared_by_threads(
    settings: settings_mod.Settings, amqp: aio_pika.abc.AbstractChannel
) -> None:
    """One instance, as WSGI threads share it: threads publishing at the same moment each
    get their publishes confirmed, and the work queue then holds every message once."""
    threads, per_thread = 8, 5
    requests = [[_request() for _ in range(per_thread)] for _ in range(threads)]
    start = threading.Barrier(threads)
    publishers: set[str] = set()

    def view(batch: list[events.FileRequested]) -> None:
        start.wait(timeout=30)  # all threads publish at once
        publishers.add(threading.current_thread().name)
        for event in batch:
            pub.publish(event)  # returns once the broker confirmed it

    pub = await asyncio.to_thread(publisher.SyncPublisher, AMQP_URL, namespace=settings.namespace)
    try:
        with ThreadPoolExecutor(threads, thread_name_prefix="wsgi") as pool:
            await asyncio.gather(
                *(asyncio.wrap_future(pool.submit(view, batch)) for batch in requests)
            )
    finally:
        await asyncio.to_thread(pub.close)
    assert len(publishers) == threads

    queue = await amqp.get_queue(topology.Topology(settings.namespace).work_queue, ensure=False)
    received: list[uuid.UUID] = []
    while (message := await queue.get(no_ack=True, fail=False, timeout=10)) is not None:
        received.append(events.parse_file_requested(message.body).id)
    assert sorted(received) == sorted(r.id for batch in requests for r in batch)


async def test_sync_publisher_connect_failure_raises_and_cleans_up() -> None:
    def loop_threads() -> int:
        return sum(t.name == "bgworker-publisher" for t in threading.enumerate())

    before = loop_threads()
    with pytest.raises(Exception) as info:
        await asyncio.to_thread(
            publisher.SyncPublisher, "amqp://guest:guest@127.0.0.1:1/", timeout=10
        )
    assert not isinstance(info.value, TimeoutError)  # refused at once, not after a timeout
    # Its private loop thread is gone: nothing leaks per failed construction.
    assert loop_threads() == before


def test_a_private_loop_call_past_its_timeout_is_cancelled_not_left_running() -> None:
    """The sync facades' loop: a call that outlives its timeout raises TimeoutError and is
    cancelled on the loop (a publish or connect nobody waits for must not run on)."""
    private = publisher.PrivateLoop("bgworker-test-loop", timeout=10)
    started, ended = threading.Event(), threading.Event()

    async def hang() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            ended.set()

    try:
        with pytest.raises(TimeoutError):
            private.call(hang(), 0.2)
        assert started.is_set() and ended.wait(10)
        assert private.call(asyncio.sleep(0, "still usable"), 10) == "still usable"
    finally:
        private.close()
    assert not any(t.name == "bgworker-test-loop" for t in threading.enumerate())


async def test_publish_without_declared_topology_raises(namespace: str) -> None:
    """Nothing declared for this namespace and declare=False: the publish is refused, not
    silently dropped."""
    missing = f"{namespace}-none"
    async with publisher.Publisher(AMQP_URL, namespace=missing, declare=False) as pub:
        with pytest.raises(broker.PublishError, match="no exchange"):
            await pub.publish(_request())
        # Once the topology exists, the same publisher delivers (its channel is restored).
        topo = topology.Topology(missing)
        connection = await aio_pika.connect(AMQP_URL)
        try:
            channel = await connection.channel()
            await topo.declare_exchanges(channel)
            await topo.declare_work(channel)
            event = _request()

            async def delivered() -> bool:
                try:
                    await pub.publish(event)
                except broker.PublishError:
                    return False
                return True

            await wait_until(delivered)
            assert await broker.queue_depth(await connection.channel(), topo.work_queue) == 1
        finally:
            await topo.delete(await connection.channel())
            await connection.close()


async def test_unroutable_publish_raises(namespace: str) -> None:
    """The exchange exists but no queue is bound (work queue deleted): mandatory + confirms
    turn the broker's return into PublishError."""
    ns = f"{namespace}-unbound"
    topo = topology.Topology(ns)
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        # auto_delete goes with the last binding, and this one never has one: deleted below.
        await channel.declare_exchange(
            topo.requests_exchange, aio_pika.ExchangeType.DIRECT, auto_delete=True
        )
        async with publisher.Publisher(AMQP_URL, namespace=ns, declare=False) as pub:
            with pytest.raises(broker.PublishError, match="not confirmed"):
                await pub.publish(_request())
    finally:
        await topo.delete(await connection.channel())
        await connection.close()


async def test_publisher_declares_intake_on_an_empty_broker(
    settings: settings_mod.Settings, namespace: str, db: store.Store
) -> None:
    """declare=True (default): the first publish works before any worker ever ran, and the
    message waits in the work queue."""
    ns = f"{namespace}-fresh"
    topo = topology.Topology(ns)
    event = _request()
    try:
        async with publisher.Publisher(AMQP_URL, namespace=ns) as pub:
            await pub.publish(event)
        connection = await aio_pika.connect(AMQP_URL)
        try:
            channel = await connection.channel()
            assert await broker.queue_depth(channel, topo.work_queue) == 1
            queue = await channel.get_queue(topo.work_queue, ensure=False)
            message = await queue.get(no_ack=True)
            assert events.parse_file_requested(message.body) == event
        finally:
            await connection.close()
    finally:
        connection = await aio_pika.connect(AMQP_URL)
        try:
            await topo.delete(await connection.channel())
        finally:
            await connection.close()
