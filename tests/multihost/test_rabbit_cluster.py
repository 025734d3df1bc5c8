"""The 3-node RabbitMQ cluster the multi-host tooling makes (tests/hosts/rabbit.py): it
forms with three running nodes, and a quorum queue whose leader is killed with kill -9 keeps
taking publishes through a surviving node; the node comes back into the cluster."""

from __future__ import annotations

import aio_pika
import pytest

from tests.hosts import Hosts
from tests.hosts.rabbit import AMQP_PORT, RabbitCluster

pytestmark = pytest.mark.faults


async def _publish(url: str, queue: str, count: int, declare: bool = False) -> int:
    """Publish ``count`` persistent messages with confirms; the queue's depth after."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        if declare:
            await channel.declare_queue(queue, durable=True, arguments={"x-queue-type": "quorum"})
        for i in range(count):
            await channel.default_exchange.publish(
                aio_pika.Message(str(i).encode(), delivery_mode=2), routing_key=queue
            )
        declared = await channel.declare_queue(queue, passive=True)
        assert declared.declaration_result.message_count is not None
        return declared.declaration_result.message_count


async def test_cluster_survives_kill9_of_a_quorum_queue_leader(
    hosts: Hosts, rabbit_cluster: RabbitCluster
) -> None:
    assert rabbit_cluster.running_nodes() == {"rabbit@h1", "rabbit@h2", "rabbit@h3"}
    # The test process lives in the root namespace: it reaches each node through a proxy.
    local = {
        n.name: f"amqp://guest:guest@127.0.0.1:{hosts.forward(n.host, AMQP_PORT).port}/"
        for n in rabbit_cluster.nodes
    }
    queue = "hosts-tooling-check"
    assert await _publish(local["rabbit@h1"], queue, 10, declare=True) == 10
    leader = rabbit_cluster.leader(queue)
    leader.kill()
    # The two members left elect a leader among themselves (in about a second here).
    rabbit_cluster.wait_leader(queue, not_on=leader)
    survivor = next(n for n in rabbit_cluster.nodes if n is not leader)
    assert await _publish(local[survivor.name], queue, 10) == 20
    leader.start()
    rabbit_cluster.wait()  # until all three run and see each other
    assert await _publish(local[leader.name], queue, 1) == 21
