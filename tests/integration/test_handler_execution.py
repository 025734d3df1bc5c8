"""Synchronous handlers, time limits and the loop watchdog, with real RabbitMQ and PostgreSQL
(issue 8, findings 4 and 5)."""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import time

import aio_pika
import pytest

from bgworker import settings as settings_mod
from bgworker import storage, store
from tests import handlers as test_handlers
from tests.helpers import (
    REPO,
    Publish,
    StartWorker,
    consume_all,
    dead_queue_of,
    settings_env,
    stored_keys,
    unfinished_writes,
    wait_for_status,
    wait_until,
)


async def test_sync_handler_blocking_for_three_leases_completes_in_one_attempt(
    db: store.Store, publish: Publish, start_worker: StartWorker, settings: settings_mod.Settings
) -> None:
    # A 1.5 s lease, renewed every 0.5 s; the handler blocks in time.sleep for 3.3 leases.
    # On the event loop that would starve the heartbeat and the second worker's reaper
    # would take the job (finding 4); on its own thread the lease stays renewed.
    settings.worker.lease_seconds = 1.5
    first = await start_worker()
    second = await start_worker()
    size = 3 * storage.BUFFER_SIZE + 17  # several buffer flushes from the handler thread
    event = await publish("sync_sleep", {"seconds": 5.0, "size": size, "seed": 7})

    await wait_until(lambda: str(event.id) in test_handlers.THREADS, timeout=30)
    log = test_handlers.THREADS[str(event.id)]

    # While the thread sleeps, the loop runs: this test polls, and the lease moves on.
    expiries: set[object] = set()
    progress: set[float | None] = set()

    async def lease_renewed_while_blocked() -> bool:
        row = await db.requests.get_request(event.id)
        assert row is not None and row.status == "running", row
        expiries.add(row.lease_expires_at)
        progress.add(row.progress)
        return len(expiries) >= 4 or log.returned.is_set()

    await wait_until(lease_renewed_while_blocked, timeout=30)
    assert not log.returned.is_set(), "the handler returned before 4 lease renewals were seen"
    # ctx.report_progress(1, 2) from the handler thread, saved by a heartbeat meanwhile.
    assert 0.5 in progress

    row = await wait_for_status(db, event.id, {"ready", "failed"}, timeout=60)
    assert row.status == "ready", (row.status, row.failure_reason, row.last_error)
    assert row.attempts == 1
    assert row.failure_reason is None and row.last_error_class is None
    assert [a["outcome"] for a in await db.requests.list_attempts(event.id)] == ["ready"]
    assert row.storage_key is not None
    data = test_handlers.blob_bytes(size, 7)
    assert storage.LocalStorage(settings.storage_dir).path(row.storage_key).read_bytes() == data
    assert row.size_bytes == size
    assert first.outcomes["lost"] == second.outcomes["lost"] == 0
    assert log.thread.startswith("bgworker-handler-")  # ran on a handler thread


@pytest.mark.both_storages
async def test_hung_async_handler_is_stopped_by_its_time_limit_and_dead_lettered(
    db: store.Store, publish: Publish, start_worker: StartWorker, settings: settings_mod.Settings
) -> None:
    await start_worker()
    started = time.monotonic()
    event = await publish("hang")  # time_limit=1.0, max_attempts=2

    row = await wait_for_status(db, event.id, "failed", timeout=20)
    assert time.monotonic() - started < 20  # "within seconds", not a hung lease
    assert row.attempts == 2
    assert row.failure_reason == "max_attempts"
    assert row.last_error_class == "TimeLimitError"
    assert row.last_error == "exceeded its time limit of 1.0 s"
    attempts = await db.requests.list_attempts(event.id)
    assert [a["error_class"] for a in attempts] == ["TimeLimitError", "TimeLimitError"]
    assert [a["outcome"] for a in attempts] == ["retrying", "failed"]

    [letter] = await consume_all(dead_queue_of(settings))
    assert letter.headers["x-bgworker-error-class"] == "TimeLimitError"
    assert letter.headers["x-bgworker-reason"] == "max_attempts"
    # The handler had written bytes: the writer was aborted, nothing partial remains.
    assert row.storage_key is None
    assert await stored_keys(settings) == [] and await unfinished_writes(settings) == []


async def test_the_global_default_time_limit_applies_to_handlers_without_their_own(
    db: store.Store, publish: Publish, start_worker: StartWorker, settings: settings_mod.Settings
) -> None:
    settings.worker.time_limit_seconds = 0.5
    settings.worker.max_attempts = 1
    await start_worker()
    event = await publish("slow", {"seconds": 30})  # no time_limit of its own
    row = await wait_for_status(db, event.id, "failed", timeout=20)
    assert row.last_error_class == "TimeLimitError"
    assert row.last_error == "exceeded its time limit of 0.5 s"


@pytest.mark.both_storages
async def test_sync_handler_that_ignores_the_stop_ends_its_attempt_at_the_limit(
    db: store.Store, publish: Publish, start_worker: StartWorker, settings: settings_mod.Settings
) -> None:
    # Concurrency 1: one handler thread, which the runaway handler keeps after its attempt.
    settings.worker.concurrency = 1
    await start_worker()
    runaway = await publish("sync_hang", {"seconds": 4.0})  # time_limit=1.0, max_attempts=1

    row = await wait_for_status(db, runaway.id, "failed", timeout=20)
    log = test_handlers.THREADS[str(runaway.id)]
    # The attempt ended without waiting for the thread, which still sleeps.
    assert not log.returned.is_set()
    assert row.attempts == 1
    assert row.last_error_class == "TimeLimitError"
    assert row.last_error == "exceeded its time limit of 1.0 s"
    assert row.storage_key is None
    assert await stored_keys(settings) == [] and await unfinished_writes(settings) == []

    # A sync job after it waits for the one thread, then runs normally: the slot was kept
    # by the runaway thread and given back when it returned, not lost or doubled.
    follower = await publish("sync_sleep", {"seconds": 0.0, "size": 5000, "seed": 3})
    ready = await wait_for_status(db, follower.id, {"ready", "failed"}, timeout=30)
    assert ready.status == "ready" and ready.attempts == 1
    assert log.returned.is_set()
    # Its late write was refused: told to stop, it could not touch the aborted file.
    assert log.raised == "TimeLimitError"
    assert await unfinished_writes(settings) == []
    assert await stored_keys(settings) == [ready.storage_key]


async def test_cooperative_sync_handler_stops_at_its_next_check(
    db: store.Store, publish: Publish, start_worker: StartWorker
) -> None:
    await start_worker()
    event = await publish("sync_cooperative")  # time_limit=1.0, max_attempts=1
    row = await wait_for_status(db, event.id, "failed", timeout=20)
    assert row.last_error_class == "TimeLimitError"
    log = test_handlers.THREADS[str(event.id)]
    await wait_until(log.returned.is_set, timeout=10)
    assert log.raised == "TimeLimitError"


async def test_blocking_async_handler_is_named_in_a_loop_blocked_warning(
    db: store.Store,
    publish: Publish,
    start_worker: StartWorker,
    settings: settings_mod.Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings.worker.loop_block_warning_seconds = 0.3
    caplog.set_level(logging.WARNING, logger="bgworker.worker.loopwatch")
    await start_worker()
    event = await publish("block_loop", {"seconds": 1.5})
    await wait_for_status(db, event.id, "ready", timeout=30)

    def watchdog_lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "bgworker.worker.loopwatch"]

    await wait_until(lambda: any("was blocked" in m for m in watchdog_lines()), timeout=10)
    lines = [m for m in watchdog_lines() if f"(request {event.id})" in m]
    during = [m for m in lines if "blocked for" in m and "so far" in m]
    after = [m for m in lines if "was blocked for" in m]
    assert during and after, watchdog_lines()
    assert "handler 'block_loop'" in during[0]
    assert "handlers.py" in during[0] and "in block_loop" in during[0]  # where it blocks
    [seconds] = re.findall(r"was blocked for ([0-9.]+) s", after[0])
    assert float(seconds) >= 1.0  # the 1.5 s sleep, less at most a tick or two


async def test_a_blocking_sync_handler_does_not_block_the_loop(
    db: store.Store,
    publish: Publish,
    start_worker: StartWorker,
    settings: settings_mod.Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings.worker.loop_block_warning_seconds = 0.3
    caplog.set_level(logging.WARNING, logger="bgworker.worker.loopwatch")
    await start_worker()
    event = await publish("sync_sleep", {"seconds": 1.5})
    await wait_for_status(db, event.id, "ready", timeout=30)
    named = [r.getMessage() for r in caplog.records if "by handler 'sync_sleep'" in r.getMessage()]
    assert named == []


async def test_the_watchdog_can_be_turned_off(
    start_worker: StartWorker, settings: settings_mod.Settings
) -> None:
    settings.worker.loop_block_warning_seconds = 0
    await start_worker()
    assert "loop-watchdog" not in {t.get_name() for t in asyncio.all_tasks()}


async def test_a_runaway_handler_thread_does_not_keep_a_stopped_worker_process_alive(
    db: store.Store,
    publish: Publish,
    settings: settings_mod.Settings,
    amqp: aio_pika.abc.AbstractChannel,
) -> None:
    # The handler sleeps 120 s and ignores the stop; the worker process (the real CLI, told
    # to stop after one job) must still exit once its attempt ended at the 1 s limit: handler
    # threads are daemon threads, unlike a ThreadPoolExecutor's, which exit joins.
    event = await publish("sync_hang", {"seconds": 120})
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bgworker",
        "worker",
        "--max-jobs",
        "1",
        cwd=REPO,
        env={**settings_env(settings), "BGWORKER_LOG_LEVEL": "WARNING"},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        row = await wait_for_status(db, event.id, "failed", timeout=60)
        assert row.last_error_class == "TimeLimitError"
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
