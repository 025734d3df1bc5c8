"""The loss of a RabbitMQ node for good, on a real 3-node cluster (tests/hosts): a producer
keeps publishing and a worker keeps working while the node that leads every queue is
``kill -9``'d and never comes back, and nothing is lost.

The worker and the producer run in this process, with ``BGWORKER_AMQP_URL`` listing the
three nodes (each reached through a forwarding proxy, ``Hosts.forward``: once its node is
dead, the proxy accepts a connection and resets it, its upstream refusing), in the order
that puts them all on the node that is killed. The multi-host scenarios with
worker hosts, S3 and emails are tests/multihost's other modules; this one is the focused
failover check.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aio_pika
import pytest
from pydantic import SecretStr

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.contract import events
from bgworker.messaging import broker, failover, publisher, topology
from tests.helpers import StartWorker, get_row, wait_until
from tests.hosts import Hosts, Proxy
from tests.hosts.rabbit import AMQP_PORT, Node, RabbitCluster

pytestmark = pytest.mark.faults

BLOBS = 40  # built once each
FLAKY = 6  # fail once, then built: through the (quorum) retry queues
PERMANENT = 4  # dead-lettered
KILL_AFTER = 15  # confirmed publishes before the node goes
SETTLE_WAIT = 180  # the stranded-retry time (30 s), a reaper's turn, and ample time for the rest


@pytest.fixture
def node_urls(module_hosts: Hosts, rabbit_cluster: RabbitCluster) -> Iterator[list[str]]:
    """One URL per node, through a proxy of the root namespace (where this test runs)."""
    proxies: list[Proxy] = [module_hosts.forward(n.host, AMQP_PORT) for n in rabbit_cluster.nodes]
    try:
        yield [f"amqp://guest:guest@127.0.0.1:{p.port}/" for p in proxies]
    finally:
        for proxy in proxies:
            proxy.close()


@pytest.fixture
async def event_ids(
    settings: settings_mod.Settings, node_urls: list[str]
) -> AsyncIterator[Counter[tuple[str, str]]]:
    """(routing key, request id) of every event, read through a failover connection from a
    quorum queue bound to the events exchange: it survives the node too."""
    seen: Counter[tuple[str, str]] = Counter()
    connection = await broker.connect(",".join(node_urls), name="bgworker-test-events")
    channel = await connection.channel()
    topo = topology.Topology(settings.namespace)
    await topo.declare_exchanges(channel)
    queue = await channel.declare_queue(
        f"{settings.namespace}.test-events", durable=True, arguments={"x-queue-type": "quorum"}
    )
    await queue.bind(topo.events_exchange, "#")

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        seen[(message.routing_key or "", json.loads(message.body)["id"])] += 1
        await message.ack()

    await queue.consume(on_message)
    yield seen
    await connection.close()


async def _queues(via: Node) -> dict[str, dict[str, Any]]:
    """name -> type, leader and members of each queue, asked of a running node."""
    out = await asyncio.to_thread(
        via.ctl, "list_queues", "name", "type", "leader", "members", "--formatter", "json"
    )
    return {q["name"]: q for q in json.loads(out)}


def _request(file_type: str, criteria: dict[str, object]) -> events.FileRequested:
    return events.FileRequested(
        id=uuid.uuid4(), file_type=file_type, criteria=criteria, filename=f"{file_type}.bin"
    )


async def _publish_all(
    pub: publisher.Publisher,
    requests: list[events.FileRequested],
    confirmed: list[uuid.UUID],
    times: list[float],
) -> int:
    """Publish each until confirmed (a caller's retry: the same id again); the retries."""
    retries = 0
    for event in requests:
        while True:
            try:
                await pub.publish(event)
                break
            except broker.PublishError:
                retries += 1
                await asyncio.sleep(0.5)
        confirmed.append(event.id)
        times.append(time.monotonic())
        await asyncio.sleep(0.05)
    return retries


async def test_a_node_lost_for_good_loses_nothing(
    settings: settings_mod.Settings,
    db: store.Store,
    rabbit_cluster: RabbitCluster,
    node_urls: list[str],
    event_ids: Counter[tuple[str, str]],
    start_worker: StartWorker,
) -> None:
    urls = ",".join(node_urls)
    settings.amqp_url = SecretStr(urls)
    # A retry whose delay ends around the kill can be held back in its retry queue by
    # RabbitMQ's at-least-once dead-letter worker (for minutes: docs/operating.md): the row
    # says it is due, and with the work queue empty the reaper republishes it after the
    # default stranded_retry_seconds (30 s; a copy that was only late then finds its request
    # done, and is dropped).
    assert settings.worker.stranded_retry_seconds == 30.0
    worker = await start_worker()
    topo = worker.topology
    # Declared through the first node, every queue is led by it: the node to lose.
    queues = await _queues(rabbit_cluster[1])
    ours = [topo.work_queue, topo.dead_queue, *map(topo.retry_queue, topo.tiers)]
    await wait_until(lambda: all(name in queues for name in ours))
    victim = rabbit_cluster[0]
    for name in ours:
        assert queues[name]["type"] == "quorum", queues[name]
        assert queues[name]["leader"] == victim.name, queues[name]
        assert len(queues[name]["members"]) == 3, queues[name]

    requests = [_request("blob", {"size": 100, "seed": i}) for i in range(BLOBS)]
    requests += [_request("flaky", {"fail_times": 1}) for _ in range(FLAKY)]
    requests += [_request("permanent", {}) for _ in range(PERMANENT)]
    requests.sort(key=lambda e: e.id)  # mixed kinds on both sides of the kill
    confirmed: list[uuid.UUID] = []
    async with publisher.Publisher(
        urls, namespace=settings.namespace, queue_type=settings.queue_type
    ) as pub:
        assert isinstance(pub._connection, failover.Connection)
        times: list[float] = []
        producing = asyncio.create_task(_publish_all(pub, requests, confirmed, times))
        await wait_until(lambda: len(confirmed) >= KILL_AFTER, timeout=60)
        await asyncio.to_thread(victim.kill)  # kill -9, and it stays down
        killed = time.monotonic()
        retries = await asyncio.wait_for(producing, 120)
        assert pub._connection.node != 0  # moved to a survivor

    kinds = {e.id: e.file_type for e in requests}

    async def all_settled() -> bool:
        for request_id in confirmed:
            row = await db.requests.get_request(request_id)
            if row is None or row.status not in ("ready", "failed"):
                return False
        return True

    try:
        await wait_until(all_settled, timeout=SETTLE_WAIT)
    except TimeoutError:
        # Say which and where they stand, and what the worker's intake holds.
        stuck = await db.pool.fetch(
            """SELECT id, status, attempts, lease_owner, lease_expires_at, next_run_at,
                      updated_at, now() AS now
               FROM bgworker_requests WHERE id = ANY($1) AND status NOT IN ('ready', 'failed')""",
            confirmed,
        )
        missing = set(confirmed) - {
            r["id"]
            for r in await db.pool.fetch(
                "SELECT id FROM bgworker_requests WHERE id = ANY($1)", confirmed
            )
        }
        intake = worker.intake
        held = (intake.busy, intake.consumers, dict(intake.counts)) if intake else None
        # What the broker holds: a quorum queue's dead-lettered messages not yet moved on
        # count in messages but in neither ready nor unacknowledged.
        out = await asyncio.to_thread(
            rabbit_cluster[1].ctl,
            "list_queues",
            "name",
            "leader",
            "messages",
            "messages_ready",
            "messages_unacknowledged",
            "--formatter",
            "json",
        )
        held_by_broker = [q for q in json.loads(out) if q["name"].startswith(settings.namespace)]
        raise AssertionError(
            f"not settled {SETTLE_WAIT} s after the kill: {[dict(r) for r in stuck]}; "
            "never recorded: "
            f"{sorted(map(str, missing))}; intake (busy, consumers, counts): {held}; "
            f"queues: {held_by_broker}"
        ) from None
    settled = time.monotonic() - killed
    recovered = await db.pool.fetchval(
        "SELECT count(*) FROM bgworker_requests WHERE id = ANY($1) AND recoveries > 0", confirmed
    )
    # Figures for the report (no timing is asserted): run with -s to see them.
    gap = max(b - a for a, b in itertools.pairwise(times))
    print(
        f"\nnode lost for good: {len(confirmed)} published ({retries} publish retries), "
        f"longest gap between confirms {gap:.1f} s, all settled {settled:.1f} s after the kill, "
        f"{recovered} republished by the reaper"
    )
    for request_id in confirmed:
        row = await get_row(db, request_id)
        expected = "failed" if kinds[request_id] == "permanent" else "ready"
        assert row.status == expected, (request_id, kinds[request_id], row.status)
        built = [a for a in await db.requests.list_attempts(request_id) if a["outcome"] == "ready"]
        assert len(built) == (0 if expected == "failed" else 1)  # built once, never twice

    # Every event went out through a surviving node (the outbox's channel moved too).
    def announced() -> bool:
        keys = {(k, i) for k, i in event_ids}
        return all(
            (("file.failed" if kinds[r] == "permanent" else "file.ready"), str(r)) in keys
            for r in confirmed
        )

    await wait_until(announced, timeout=60)
    # The dead letters are in the replicated dead-letter queue, read through a survivor.
    connection = await failover.connect_plain(urls)
    try:
        channel = await connection.channel()
        assert await broker.queue_depth(channel, topo.dead_queue) == PERMANENT
    finally:
        await connection.close()
    assert len(confirmed) == len(requests)
