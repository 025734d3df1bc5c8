"""Flow control (issue 8, findings 2 and 9): a worker takes a delivery only when it can start
it, so work waits in the queue for whichever worker is idle, no delivery is handed back for
lack of a slot, and ``--max-jobs N`` runs exactly N. Every test runs on a quorum and on a
classic work queue."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from bgworker import handlers, store, worker
from bgworker import settings as settings_mod
from bgworker.messaging import broker, topology
from bgworker.worker import intake
from tests.helpers import (
    Publish,
    StartWorker,
    assert_never_handed_back,
    wait_for_status,
    wait_until,
)


@pytest.fixture(params=["quorum", "classic"])
def settings(settings: settings_mod.Settings, request: pytest.FixtureRequest) -> Any:
    # Set before `amqp`, `publish` and the workers declare the topology.
    settings.queue_type = request.param
    return settings


async def _depth(amqp: aio_pika.abc.AbstractChannel, settings: settings_mod.Settings) -> int:
    return await broker.queue_depth(amqp, topology.Topology(settings.namespace).work_queue)


async def test_a_handed_back_delivery_is_seen_as_redelivered(
    db: store.Store,
    publish: Publish,
    start_worker: StartWorker,
    settings: settings_mod.Settings,
    amqp: aio_pika.abc.AbstractChannel,
) -> None:
    """The instrument the other tests rely on: a delivery the broker had delivered before
    (here nacked once by hand) is counted by the worker, from the redelivered flag and, on
    a quorum queue, the x-delivery-count header RabbitMQ adds."""
    event = await publish("blob", {"size": 10})
    queue = await amqp.get_queue(topology.Topology(settings.namespace).work_queue, ensure=False)
    first = await queue.get(timeout=5)
    assert first is not None and not first.redelivered
    await first.nack(requeue=True)
    again = await queue.get(timeout=5)
    assert again is not None and again.redelivered
    if settings.queue_type == "quorum":
        assert (again.headers or {}).get("x-delivery-count") == 1
    await again.nack(requeue=True)

    w = await start_worker()
    await wait_for_status(db, event.id, "ready", timeout=10)
    assert w.intake is not None
    assert w.intake.counts["redelivered"] == 1
    assert w.intake.counts["returned"] == 0


async def test_an_idle_worker_gets_the_job_a_busy_worker_cannot_start(
    db: store.Store,
    publish: Publish,
    start_worker: StartWorker,
    settings: settings_mod.Settings,
    amqp: aio_pika.abc.AbstractChannel,
) -> None:
    settings.worker.concurrency = 1
    settings.worker.drain_timeout_seconds = 0.5  # teardown: release the 20 s job at once
    busy = await start_worker(worker_id="busy")
    slow = await publish("slow", {"seconds": 20})
    running = await wait_for_status(db, slow.id, "running", timeout=10)
    assert running.lease_owner == "busy"

    # Published while only the busy worker consumes: before, it prefetched this one and
    # held it for up to HOLD_TIMEOUT_SECONDS (300 s) while the idle worker got nothing.
    instant = await publish("blob", {"size": 10})
    idle = await start_worker(worker_id="idle")
    loop = asyncio.get_running_loop()
    since = loop.time()
    row = await wait_for_status(db, instant.id, "ready", timeout=15)
    waited = loop.time() - since
    assert waited < 2.0, f"the instant job waited {waited:.1f}s behind the 20 s one"
    assert row.attempts == 1
    assert [a["worker"] for a in await db.requests.list_attempts(instant.id)] == ["idle"]

    # Its delivery count did not grow: the idle worker got it as a first delivery (no
    # redelivered flag, no x-delivery-count; on a quorum queue only the broker's own return
    # of a delivery caught by a cancel could add one), and the busy worker handed nothing back.
    assert idle.intake is not None and busy.intake is not None
    assert idle.intake.counts["taken"] == 1
    assert_never_handed_back(idle.intake, settings.queue_type)
    assert busy.intake.counts["taken"] == 1
    assert busy.intake.counts["returned"] == 0
    assert busy.intake.consumers == 0  # its one slot is busy: no consumer open
    status = await db.requests.get_request(slow.id)
    assert status is not None and status.status == "running"


async def test_max_jobs_runs_exactly_n_and_leaves_the_rest_undelivered(
    db: store.Store,
    publish: Publish,
    start_worker: StartWorker,
    settings: settings_mod.Settings,
    amqp: aio_pika.abc.AbstractChannel,
) -> None:
    requests = [await publish("blob", {"size": 10, "seed": i}) for i in range(5)]
    w = worker.Worker(settings, handlers.load(settings.handlers), limits=worker.Limits(max_jobs=2))
    outcomes = await asyncio.wait_for(w.run(), timeout=60)  # concurrency 4: 2 at once
    assert dict(outcomes) == {"ready": 2}
    assert w.intake is not None
    assert w.intake.counts["taken"] == 2
    assert w.intake.counts["returned"] == 0

    # The other three never left the queue: no row was recorded for them ...
    rows = [await db.requests.get_request(r.id) for r in requests]
    assert sorted(r.status if r else "unseen" for r in rows) == ["ready"] * 2 + ["unseen"] * 3
    assert await _depth(amqp, settings) == 3

    # ... and the next worker gets each as a first delivery and runs it once.
    later = await start_worker()
    for r in requests:
        row = await wait_for_status(db, r.id, "ready", timeout=15)
        assert row.attempts == 1
    assert later.intake is not None
    assert later.intake.counts["taken"] == 3
    assert_never_handed_back(later.intake, settings.queue_type)


async def test_max_jobs_does_not_count_a_duplicate_delivery(
    db: store.Store,
    publish: Publish,
    start_worker: StartWorker,
    settings: settings_mod.Settings,
    amqp: aio_pika.abc.AbstractChannel,
) -> None:
    done = await publish("blob", {"size": 10})
    first = await start_worker()
    await wait_for_status(db, done.id, "ready", timeout=10)
    first.stop()
    await wait_until(lambda: first.intake is not None and first.intake.consumers == 0)

    await publish("blob", {"size": 10}, id=done.id)  # a double publish: runs nothing
    fresh = await publish("blob", {"size": 10, "seed": 2})
    w = worker.Worker(settings, handlers.load(settings.handlers), limits=worker.Limits(max_jobs=1))
    outcomes = await asyncio.wait_for(w.run(), timeout=60)
    assert dict(outcomes) == {"duplicate": 1, "ready": 1}
    row = await db.requests.get_request(fresh.id)
    assert row is not None and row.status == "ready"


async def test_a_full_worker_leaves_the_rest_in_the_queue_and_never_hands_back(
    db: store.Store,
    publish: Publish,
    start_worker: StartWorker,
    settings: settings_mod.Settings,
    amqp: aio_pika.abc.AbstractChannel,
) -> None:
    settings.worker.concurrency = 2
    w = await start_worker()
    requests = [await publish("slow", {"seconds": 2}) for _ in range(6)]

    await wait_until(lambda: _running_is(db, 2), timeout=10)
    # Two running, four still ready in the broker: none taken ahead of a free slot.
    assert await _depth(amqp, settings) == 4

    for r in requests:
        await wait_for_status(db, r.id, "ready", timeout=30)
    assert w.intake is not None
    assert w.intake.peak == 2
    assert w.intake.counts["taken"] == 6
    assert_never_handed_back(w.intake, settings.queue_type)
    # Never more than two at once, by the attempts' own start and finish times.
    spans = []
    for r in requests:
        [attempt] = await db.requests.list_attempts(r.id)
        spans.append((attempt["started_at"], attempt["finished_at"]))
    assert max(sum(1 for s, f in spans if s <= t < f) for t, _ in spans) == 2


async def _running_is(db: store.Store, n: int) -> bool:
    return (await db.maintenance.count_by_status()).get("running", 0) == n


async def test_stop_cancels_the_consumer_and_leaves_the_queue_to_others(
    db: store.Store,
    publish: Publish,
    start_worker: StartWorker,
    settings: settings_mod.Settings,
    amqp: aio_pika.abc.AbstractChannel,
) -> None:
    w = await start_worker()
    assert w.intake is not None and w.intake.consumers > 0
    w.stop()
    intake = w.intake
    await wait_until(lambda: intake.consumers == 0, timeout=10)
    event = await publish("blob", {"size": 10})
    other = await start_worker()
    await wait_for_status(db, event.id, "ready", timeout=10)
    assert_never_handed_back(other.intake, settings.queue_type)
    assert w.intake.counts["taken"] == 0


def _rabbitmqctl(*args: str) -> list[list[str]]:
    table = ["-q", "--no-table-headers"] if args[0].startswith("list_") else []
    out = subprocess.run(
        ["rabbitmqctl", *table, *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    # Only whole rows: a field with a line break in it (another client's properties on the
    # shared broker) would otherwise leave a fragment row (seen once: a one-field row).
    fields = len(args) - 1
    rows = [line.split("\t", fields - 1) for line in out.splitlines() if line]
    return [row for row in rows if len(row) == fields] if args[0].startswith("list_") else rows


def _connection_of(worker_id: str) -> tuple[str, int] | None:
    """(pid, open channels) of the worker's broker connection, by its client-provided name."""
    name = f'{{"connection_name","bgworker-worker {worker_id}"}}'
    for pid, channels, properties in _rabbitmqctl(
        "list_connections", "pid", "channels", "client_properties"
    ):
        if name in properties:
            return pid, int(channels)
    return None


async def _drop_connection(worker_id: str) -> None:
    """Close the worker's connection from the broker side (as a network cut would end it)
    and wait until aio-pika has reconnected and reopened both of its channels."""
    before = await asyncio.to_thread(_connection_of, worker_id)
    assert before is not None
    await asyncio.to_thread(_rabbitmqctl, "close_connection", before[0], "flow control test")

    async def reconnected() -> bool:
        now = await asyncio.to_thread(_connection_of, worker_id)
        return now is not None and now[0] != before[0] and now[1] >= 2

    await wait_until(reconnected, timeout=60)


async def _consumer_tags(queue: str) -> list[str]:
    rows = await asyncio.to_thread(_rabbitmqctl, "list_consumers", "queue_name", "consumer_tag")
    return [tag for name, tag in rows if name == queue]


async def test_a_reconnect_restores_the_consumer_only_while_a_slot_is_free(
    db: store.Store,
    publish: Publish,
    start_worker: StartWorker,
    settings: settings_mod.Settings,
    amqp: aio_pika.abc.AbstractChannel,
    tmp_path: Path,
) -> None:
    settings.worker.concurrency = 1
    work_queue = topology.Topology(settings.namespace).work_queue
    worker_id = f"flow-{uuid.uuid4().hex[:8]}"
    w = await start_worker(worker_id=worker_id)
    assert w.intake is not None
    # Holds the only slot until the test has looked (a reconnect takes 5 s or more, and
    # rabbitmqctl is slow on a busy machine: a timed job could end before the checks).
    gate = tmp_path / "open"
    slow = await publish("gate", {"path": str(gate)})
    await wait_for_status(db, slow.id, "running", timeout=10)
    assert w.intake.consumers == 0

    # Cut while the consumer is cancelled: the reconnect must not bring it back.
    await _drop_connection(worker_id)
    waiting = await publish("blob", {"size": 10})
    assert await _consumer_tags(work_queue) == []
    assert await _depth(amqp, settings) == 1
    # The slot frees: the worker consumes again, on the restored channel.
    gate.touch()
    row = await wait_for_status(db, waiting.id, "ready", timeout=30)
    assert row.attempts == 1
    slow_row = await wait_for_status(db, slow.id, "ready", timeout=30)
    assert slow_row.attempts == 1

    # Cut while the consumer is open: the reconnect restores it.
    await wait_until(lambda: w.intake is not None and w.intake.consumers == 1, timeout=10)
    await _drop_connection(worker_id)
    assert len(await _consumer_tags(work_queue)) == 1
    after = await publish("blob", {"size": 10, "seed": 1})
    await wait_for_status(db, after.id, "ready", timeout=30)
    assert_never_handed_back(w.intake, settings.queue_type)


async def test_two_consumers_never_take_more_than_the_free_slots(
    db: store.Store,
    publish: Publish,
    start_worker: StartWorker,
    settings: settings_mod.Settings,
    amqp: aio_pika.abc.AbstractChannel,
) -> None:
    """From a concurrency of ``intake.SECOND_CONSUMER_AT`` a worker keeps two consumers of
    prefetch ``p`` open, and the rule still holds: never more deliveries in hand than slots,
    nothing handed back, the rest left in the queue, no consumer open while every slot is
    busy."""
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
    assert_never_handed_back(w.intake, settings.queue_type)
    spans = []
    for r in requests:
        [attempt] = await db.requests.list_attempts(r.id)
        spans.append((attempt["started_at"], attempt["finished_at"]))
    assert max(sum(1 for s, f in spans if s <= t < f) for t, _ in spans) == slots
    await wait_until(lambda: w.intake is not None and w.intake.consumers == 2, timeout=10)
