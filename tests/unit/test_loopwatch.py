"""The loop watchdog without services: it speaks while the loop is still blocked, names the
handler task the loop is stuck in, and stays quiet for a loop that keeps running."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid

import pytest

from bgworker.handlers import execution as execution_mod
from bgworker.worker import loopwatch
from tests.helpers import wait_until

LOGGER = "bgworker.worker.loopwatch"


def _messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


async def _watching(
    execution: execution_mod.Execution, threshold: float
) -> tuple[asyncio.Event, asyncio.Task[None]]:
    stopping = asyncio.Event()
    task = asyncio.create_task(
        loopwatch.LoopWatch(threshold, execution).run(stopping), name="loop-watchdog"
    )
    await asyncio.sleep(0)  # let it take its first tick
    return stopping, task


async def test_a_blocked_loop_is_reported_during_the_block_naming_the_handler(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    execution = execution_mod.Execution(1)
    stopping, watch = await _watching(execution, 0.2)
    request_id = uuid.uuid4()
    seen_during_block: list[str] = []

    async def job() -> None:
        execution.running[request_id] = execution_mod.Running(
            request_id, "pandas_report", False, time.monotonic(), asyncio.current_task()
        )
        # Blocks the loop; polls the log from this (the loop's) thread, so what it sees was
        # written by the watchdog thread while the loop could not run.
        until = time.monotonic() + 10
        while time.monotonic() < until and not _messages(caplog):
            time.sleep(0.01)  # noqa: ASYNC251 - blocking on purpose
        seen_during_block.extend(_messages(caplog))
        del execution.running[request_id]

    await asyncio.create_task(job(), name="job-under-test")
    assert len(seen_during_block) == 1, seen_during_block
    [during] = seen_during_block
    assert "so far" in during
    assert f"handler 'pandas_report' (request {request_id})" in during
    assert "test_loopwatch.py" in during and "in job" in during

    await wait_until(lambda: len(_messages(caplog)) == 2, timeout=10)
    after = _messages(caplog)[1]
    assert "was blocked for" in after and "'pandas_report'" in after
    stopping.set()
    await asyncio.wait_for(watch, 5)


async def test_a_block_outside_any_handler_says_so(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    execution = execution_mod.Execution(1)
    stopping, watch = await _watching(execution, 0.1)
    other = uuid.uuid4()
    execution.running[other] = execution_mod.Running(other, "csv", True, time.monotonic(), None)
    time.sleep(0.5)  # noqa: ASYNC251 - blocking on purpose, in the test's own task
    await wait_until(lambda: len(_messages(caplog)) == 2, timeout=10)
    during = _messages(caplog)[0]
    assert "not a handler" in during and f"'csv' (request {other})" in during
    stopping.set()
    await asyncio.wait_for(watch, 5)


async def test_a_running_loop_gives_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    stopping, watch = await _watching(execution_mod.Execution(1), 0.5)
    # Busy but cooperative: many short steps, each far below the threshold.
    for _ in range(150):
        await asyncio.sleep(0.01)
    stopping.set()
    await asyncio.wait_for(watch, 5)
    assert _messages(caplog) == []


async def test_the_watching_thread_ends_with_the_task() -> None:
    stopping, watch = await _watching(execution_mod.Execution(1), 0.2)
    assert any(t.name == "bgworker-loopwatch" for t in threading.enumerate())
    stopping.set()
    await asyncio.wait_for(watch, 5)
    await wait_until(
        lambda: not any(t.name == "bgworker-loopwatch" for t in threading.enumerate()),
        timeout=5,
    )
