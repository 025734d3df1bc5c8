"""Several broker addresses on one machine: each "node" is a TCP proxy of the test's own in
front of the machine's RabbitMQ (tests/tcp_proxy.py), so one can go away for good without
touching the shared broker. The 3-node cluster tests are in tests/acceptance
(test_cluster_failover.py, the fault stage)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.contract import events
from bgworker.messaging import broker, failover, publisher
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
