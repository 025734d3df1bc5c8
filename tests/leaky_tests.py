"""Tests that leave things on the broker, for tests/integration/test_leftovers.py to run in
a pytest of their own (the name does not match test_*.py: never collected otherwise)."""

from __future__ import annotations

import os
from pathlib import Path

import aio_pika

from bgworker import settings as settings_mod
from bgworker.messaging import topology
from tests import helpers


def _note(namespace: str) -> None:
    with Path(os.environ["BGWORKER_TEST_LEAK_LOG"]).open("a") as log:
        log.write(namespace + "\n")


async def test_declares_a_queue_of_its_own_and_leaves_it(namespace: str) -> None:
    _note(namespace)
    connection = await aio_pika.connect(helpers.AMQP_URL)
    channel = await connection.channel()
    await channel.declare_queue(f"{namespace}.left-behind", durable=True)
    await connection.close()


async def test_fails_after_declaring_another_retry_tier(
    settings: settings_mod.Settings, amqp: aio_pika.abc.AbstractChannel
) -> None:
    # As test_guarantees does: the fixtures declared the usual tiers, the test one more.
    _note(settings.namespace)
    settings.worker.retry_delays_seconds = [1.5]
    await topology.Topology(settings.namespace, (1.5,)).declare(amqp)
    raise AssertionError("fails on purpose: its topology must go all the same")
