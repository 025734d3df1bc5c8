"""Priorities (issue 21): `priority` low/normal/high becomes the AMQP message priority. A
classic work queue (declared with x-max-priority) serves higher first; RabbitMQ 3.x quorum
queues ignore it (4.x serves two levels, 2:1), so there it only has to be carried."""

from __future__ import annotations

import json

import aio_pika
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.contract import events
from bgworker.messaging import topology, wire
from tests.helpers import Publish, StartWorker, wait_until


@pytest.mark.parametrize("queue_type", ["classic"])
async def test_a_classic_work_queue_serves_high_before_normal_before_low(
    db: store.Store,
    publish: Publish,
    start_worker: StartWorker,
    settings: settings_mod.Settings,
    amqp: aio_pika.abc.AbstractChannel,
) -> None:
    settings.worker.concurrency = 1
    order = ["low", "normal", "high", "low", "high", "normal"]
    # All waiting in the queue before a worker looks: the broker orders them.
    published = [
        await publish("blob", {"size": 5, "seed": i}, priority=p) for i, p in enumerate(order)
    ]
    await start_worker()

    async def all_done() -> bool:
        n = await db.pool.fetchval("SELECT count(*) FROM bgworker_requests WHERE status='ready'")
        return bool(n == len(order))

    await wait_until(all_done, timeout=30)
    started = {
        r["id"]: r["started_at"]
        for r in await db.pool.fetch("SELECT id, started_at FROM bgworker_requests")
    }
    ran = [e.priority for e in sorted(published, key=lambda e: started[e.id])]
    assert ran == ["high", "high", "normal", "normal", "low", "low"]


@pytest.mark.parametrize("queue_type", ["quorum"])
async def test_priorities_are_carried_on_a_quorum_queue(
    db: store.Store,
    publish: Publish,
    start_worker: StartWorker,
    amqp: aio_pika.abc.AbstractChannel,
    settings: settings_mod.Settings,
) -> None:
    evs = [await publish("blob", {"size": 5}, priority=p) for p in ("low", "high", "normal")]
    queue = await amqp.get_queue(topology.Topology(settings.namespace).work_queue, ensure=False)
    got = [await queue.get(timeout=5) for _ in evs]
    assert sorted(m.priority or 0 for m in got if m) == [0, 1, 5]
    for m in got:
        assert m is not None
        await m.nack(requeue=True)
    await start_worker()

    async def all_done() -> bool:
        n = await db.pool.fetchval("SELECT count(*) FROM bgworker_requests WHERE status='ready'")
        return bool(n == len(evs))

    await wait_until(all_done, timeout=30)


@pytest.mark.parametrize("queue_type", ["classic"])
async def test_a_classic_work_queue_declared_without_priorities_still_works(
    settings: settings_mod.Settings,
    db: store.Store,
    namespace: str,
    start_worker: StartWorker,
    publish: Publish,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An older deployment's queue: its arguments cannot change, so it stays FIFO."""
    connection = await aio_pika.connect(settings.amqp_url.get_secret_value())
    try:
        channel = await connection.channel()
        topo = topology.Topology(namespace, queue_type="classic")
        await channel.queue_delete(topo.work_queue)
        await channel.declare_queue(
            topo.work_queue, durable=True, arguments=topo._work_arguments(priorities=False)
        )
        await topo.declare(channel)  # does not raise
        assert "declared without x-max-priority" in caplog.text
    finally:
        await connection.close()
    event = await publish("blob", {"size": 5}, priority="high")
    await start_worker()

    async def done() -> bool:
        row = await db.requests.get_request(event.id)
        return row is not None and row.status == "ready"

    await wait_until(done, timeout=30)


@given(st.one_of(st.text(max_size=10), st.integers(), st.none(), st.sampled_from(["low", "high"])))
def test_priority_values_from_outside(value: object) -> None:
    body = json.dumps(
        {"id": "7d4e2f3c-2f6b-4d0b-9a63-1a1b2c3d4e5f", "file_type": "t", "priority": value}
    )
    try:
        event = events.parse_file_requested(body.encode())
    except events.InvalidEventError:
        assert value not in ("low", "normal", "high")
        # Its dead letter still has a priority: normal.
        assert wire.priority_of(body.encode()) == wire.PRIORITIES["normal"]
        return
    assert value in ("low", "normal", "high")
    assert (
        wire.request(event.model_dump(mode="json"), "x").priority == wire.PRIORITIES[event.priority]
    )
    assert wire.priority_of(body.encode()) == wire.PRIORITIES[event.priority]
