"""A handler that kills its worker process every time ends failed, not in a loop."""

from __future__ import annotations

from pathlib import Path

import aio_pika

from bgworker import settings as settings_mod
from bgworker import store
from tests.acceptance.workers import WorkerProcs
from tests.helpers import (
    AMQP_URL,
    Publish,
    dead_queue_of,
    get_row,
    settings_env,
    wait_for_status,
    wait_until,
)


async def test_handler_that_kills_its_worker_is_failed_after_max_attempts(
    settings: settings_mod.Settings, db: store.Store, publish: Publish, tmp_path: Path
) -> None:
    procs = WorkerProcs(settings_env(settings), tmp_path)
    procs.start()
    poison = await publish("crash", {})
    good = await publish("blob", {"size": 100})
    restarts = 0

    async def supervised_failed() -> bool:
        # Play the process supervisor (systemd, Kubernetes): restart the worker when it dies.
        nonlocal restarts
        if not procs.alive:
            restarts += 1
            procs.start()
        row = await db.requests.get_request(poison.id)
        return row is not None and row.status == "failed"

    try:
        await wait_until(supervised_failed, timeout=120)
        assert (await wait_for_status(db, good.id, "ready")).status == "ready"
    finally:
        procs.stop_all()

    row = await get_row(db, poison.id)
    assert row.failure_reason == "worker_lost"
    assert row.attempts == 2 and restarts == 2
    outcomes = [a["outcome"] for a in await db.requests.list_attempts(poison.id)]
    assert outcomes == ["lost", "lost"]
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        queue = await channel.get_queue(dead_queue_of(settings), ensure=False)
        letter = await queue.get(fail=False)
        assert letter is not None
        assert letter.headers["x-bgworker-reason"] == "worker_lost"
        assert letter.message_id == str(poison.id)
        await letter.ack()
    finally:
        await connection.close()
