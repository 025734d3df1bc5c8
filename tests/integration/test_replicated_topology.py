"""Every queue bgworker declares is a quorum queue (replicated) with queue_type quorum, and
a deployment of before, with classic dead-letter and retry queues, upgrades without losing
a message (messaging.declaring, ``bgworker dlq migrate``)."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import uuid

import aio_pika
import pytest

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.contract import events
from bgworker.messaging import topology, wire
from tests.helpers import Publish, StartWorker, wait_for_status, wait_until
from tests.integration.letters import Cli, depth


async def queue_types(namespace: str) -> dict[str, str]:
    return await asyncio.to_thread(_queue_types, namespace)


def _queue_types(namespace: str) -> dict[str, str]:
    """name -> type of the namespace's queues, as the broker has them (rabbitmqctl)."""
    out = subprocess.run(
        ["rabbitmqctl", "-q", "--no-table-headers", "list_queues", "name", "type"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    rows = (line.split("\t") for line in out.splitlines() if line.startswith(f"{namespace}."))
    return {name: kind for name, kind in rows}


def _topologies(settings: settings_mod.Settings) -> tuple[topology.Topology, topology.Topology]:
    delays = tuple(settings.worker.retry_delays_seconds)
    return (
        topology.Topology(settings.namespace, delays, "quorum"),
        topology.Topology(settings.namespace, delays, "classic"),
    )


async def test_every_queue_is_a_quorum_queue(
    settings: settings_mod.Settings, db: store.Store, start_worker: StartWorker, publish: Publish
) -> None:
    await start_worker()
    event = await publish("blob", {"size": 10, "seed": 2})
    await wait_for_status(db, event.id, "ready")
    topo, _ = _topologies(settings)
    expected = {topo.work_queue, topo.dead_queue, topo.cancel_queue}
    expected |= set(map(topo.retry_queue, topo.tiers))
    assert await queue_types(settings.namespace) == dict.fromkeys(expected, "quorum")


async def test_classic_queues_of_before_are_retired_without_losing_a_message(
    settings: settings_mod.Settings,
    db: store.Store,
    amqp: aio_pika.abc.AbstractChannel,  # the new topology, declared
    start_worker: StartWorker,
    cli: Cli,
    caplog: pytest.LogCaptureFixture,
) -> None:
    new, old = _topologies(settings)
    # The deployment of before: classic dead-letter and retry queues, bound.
    await old.declare_side_queues(amqp)
    # One old dead letter, and a request waiting out its retry delay in an old retry queue.
    letter = aio_pika.Message(b"old letter", headers={"x-bgworker-reason": "max_attempts"})
    await amqp.default_exchange.publish(letter, old.dead_queue)
    # (test_failures and test_dlq cover how a request reaches a retry queue; here it is
    # simply put there.)
    caplog.set_level(logging.INFO)
    retried = await _request_in(amqp, old.retry_queue(new.tiers[-1]))

    await start_worker()
    await wait_for_status(db, retried, "ready")  # expired back into the work queue, done
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name == "bgworker.messaging.declaring"
    ]
    assert warnings == [
        f"the classic dead-letter queue {old.dead_queue} from before holds 1 letter(s); new "
        f"letters go to {new.dead_queue}: run `bgworker dlq migrate` to move the old ones there"
    ]

    async def old_retry_queues_gone() -> bool:
        return not set(map(old.retry_queue, old.tiers)) & set(await queue_types(settings.namespace))

    await wait_until(old_retry_queues_gone, timeout=60)  # emptied, then deleted
    # A new dead letter reaches the replicated queue only: the old one is unbound.
    dead = await amqp.get_exchange(new.dead_exchange)
    await dead.publish(aio_pika.Message(b"new letter"), "")
    await wait_until(lambda: _depth_is(amqp, new.dead_queue, 1))
    assert await depth(amqp, old.dead_queue) == 1

    code, out, err = await cli("dlq", "migrate")
    assert code == 0, err
    assert f"moved 1 letter(s) from {old.dead_queue} to {new.dead_queue}" in out
    assert old.dead_queue not in await queue_types(settings.namespace)  # emptied, deleted
    queue = await amqp.get_queue(new.dead_queue, ensure=False)
    bodies = {}
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        bodies[message.body] = message.headers.get("x-bgworker-reason")
    assert bodies == {b"new letter": None, b"old letter": "max_attempts"}
    code, _, err = await cli("dlq", "migrate")  # nothing left to move: said, not a crash
    assert code != 0 and f"no classic queue {old.dead_queue}" in err


async def _depth_is(channel: aio_pika.abc.AbstractChannel, name: str, n: int) -> bool:
    return await depth(channel, name) == n


async def _request_in(channel: aio_pika.abc.AbstractChannel, queue: str) -> uuid.UUID:
    """A real request, published straight into ``queue``; its id."""
    event = events.FileRequested(
        id=uuid.uuid4(), file_type="blob", criteria={"size": 10, "seed": 3}, filename="r.bin"
    )
    message = wire.request(event.model_dump(mode="json"), str(event.id))
    await channel.default_exchange.publish(message, queue)
    return event.id
