"""Several broker addresses on one machine: each "node" is a TCP proxy of the test's own in
front of the machine's RabbitMQ (tests/tcp_proxy.py), so one can go away for good without
touching the shared broker. The 3-node cluster tests are in tests/acceptance
(test_cluster_failover.py, the fault stage)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator

import aio_pika
import pytest
from pydantic import SecretStr

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.contract import events
from bgworker.messaging import broker, failover, publisher, topology
from tests import tcp_proxy
from tests.helpers import AMQP_URL, StartWorker, wait_for_status, wait_until

DEAD = "amqp://guest:guest@127.0.0.1:1/"  # nothing listens on port 1


@pytest.fixture
async def nodes() -> AsyncIterator[tuple[tcp_proxy.TcpProxy, tcp_proxy.TcpProxy]]:
    async with tcp_proxy.proxy_to(AMQP_URL) as first, tcp_proxy.proxy_to(AMQP_URL) as second:
        yield first, second


def _request() -> events.FileRequested:
    return events.FileRequested(
        id=uuid.uuid4(), file_type="blob", criteria={"size": 10, "seed": 1}, filename="b.bin"
    )


async def test_a_dead_first_address_connects_through_the_next() -> None:
    urls = f"{DEAD},{AMQP_URL}"
    connection = await broker.connect(urls, name="bgworker-test-failover")
    try:
        assert isinstance(connection, failover.Connection)
        assert connection.node == 1
    finally:
        await connection.close()
    plain = await failover.connect_plain(urls)
    await plain.close()
    with pytest.raises(ConnectionError):
        await failover.connect_plain(f"{DEAD},{DEAD}")


async def test_publisher_and_worker_move_to_the_next_node_when_theirs_goes_for_good(
    nodes: tuple[tcp_proxy.TcpProxy, tcp_proxy.TcpProxy],  # first: closed after the worker
    settings: settings_mod.Settings,
    db: store.Store,
    start_worker: StartWorker,
) -> None:
    first, second = nodes
    urls = f"{first.url(AMQP_URL)},{second.url(AMQP_URL)}"
    settings.amqp_url = SecretStr(urls)
    await start_worker()
    async with publisher.Publisher(
        urls, namespace=settings.namespace, queue_type=settings.queue_type
    ) as pub:
        before = _request()
        await pub.publish(before)
        await wait_for_status(db, before.id, "ready")
        assert second.accepted == 0  # everyone on the first node so far

        await first.refuse()  # the node is gone, and stays gone

        after = _request()

        async def published() -> bool:
            try:  # refused while the connection moves over (a caller retries or fails)
                await pub.publish(after)
            except broker.PublishError:
                return False
            return True

        await wait_until(published, timeout=60)
        # The worker's consumer was restored on the second node: it takes the new request.
        await wait_for_status(db, after.id, "ready", timeout=60)
    assert second.accepted >= 2  # the worker's connection and the publisher's


async def test_a_queue_that_cannot_be_declared_blocks_neither_connecting_nor_publishing(
    namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """On a cluster, a queue whose node is down refuses every declaration (NOT_FOUND);
    here a classic queue squats the quorum dead-letter queue's name, so every declaration
    of it is refused (PRECONDITION_FAILED), on every connect. The producer connects and
    publishes anyway, says so once, and declares the queue once it can."""
    topo = topology.Topology(namespace)
    connection = await aio_pika.connect(AMQP_URL)
    try:
        squatter = await connection.channel()
        await squatter.declare_queue(topo.dead_queue, durable=True)
        caplog.set_level(logging.INFO, logger="bgworker.messaging.declaring")
        async with publisher.Publisher(AMQP_URL, namespace=namespace) as pub:
            await pub.publish(_request())  # the work queue was declared: confirmed
            lines = [(r.levelname, r.getMessage()) for r in caplog.records]
            assert len(lines) == 1 and lines[0][0] == "WARNING", lines
            assert lines[0][1].startswith(f"could not declare the {namespace} queues (")
            assert "publishing and consuming go on, declaring again in 10 s" in lines[0][1]
            await squatter.queue_delete(topo.dead_queue)

            def declared() -> bool:
                return any(
                    r.getMessage() == f"declared the {namespace} queues" for r in caplog.records
                )

            await wait_until(declared, timeout=30)
        raw = await (await connection.channel()).get_underlay_channel()
        ok = await raw.queue_declare(topo.dead_queue, passive=True)  # now the quorum one
        assert ok.message_count == 0
        assert await broker.queue_depth(await connection.channel(), topo.work_queue) == 1
    finally:
        await connection.close()
