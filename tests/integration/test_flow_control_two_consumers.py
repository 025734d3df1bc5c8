"""Flow control with two consumers (``intake.SECOND_CONSUMER_AT``): from a concurrency of 8 a
worker keeps two consumers of prefetch 1 open, and the rule of ``test_flow_control`` still
holds: never more deliveries in hand than slots, nothing handed back, the rest left in the
queue, no consumer open while every slot is busy."""

from __future__ import annotations

from typing import Any

import aio_pika
import pytest

from bgworker import broker, intake, store, topology
from bgworker import settings as settings_mod
from tests.helpers import Publish, StartWorker, wait_for_status, wait_until


@pytest.fixture(params=["quorum", "classic"])
def settings(settings: settings_mod.Settings, request: pytest.FixtureRequest) -> Any:
    # Set before `amqp`, `publish` and the workers declare the topology.
    settings.queue_type = request.param
    return settings


async def _depth(amqp: aio_pika.abc.AbstractChannel, settings: settings_mod.Settings) -> int:
    return await broker.queue_depth(amqp, topology.Topology(settings.namespace).work_queue)


async def test_two_consumers_never_take_more_than_the_free_slots(
    db: store.Store,
    publish: Publish,
    start_worker: StartWorker,
    settings: settings_mod.Settings,
    amqp: aio_pika.abc.AbstractChannel,
) -> None:
    slots = intake.SECOND_CONSUMER_AT
    settings.worker.concurrency = slots
    w = await start_worker()
    assert w.intake is not None
    assert w.intake.consumers == 2  # idle: both open

    requests = [await publish("slow", {"seconds": 3}) for _ in range(slots + 3)]
    await wait_until(lambda: _running_is(db, slots), timeout=15)
    # Every slot busy: both consumers cancelled, the other three still in the broker.
    assert w.intake.consumers == 0
    assert await _depth(amqp, settings) == 3

    for r in requests:
        await wait_for_status(db, r.id, "ready", timeout=30)
    assert w.intake.peak == slots
    assert w.intake.counts["taken"] == slots + 3
    assert w.intake.counts["returned"] == 0
    assert w.intake.counts["redelivered"] == 0
    spans = []
    for r in requests:
        [attempt] = await db.list_attempts(r.id)
        spans.append((attempt["started_at"], attempt["finished_at"]))
    assert max(sum(1 for s, f in spans if s <= t < f) for t, _ in spans) == slots
    await wait_until(lambda: w.intake is not None and w.intake.consumers == 2, timeout=10)


async def _running_is(db: store.Store, n: int) -> bool:
    return (await db.count_by_status()).get("running", 0) == n
