"""The loop watchdog: a warning that names the handler when the event loop is blocked
(and, below, startup objects kept out of garbage collection pauses).

An ``async def`` handler that calls blocking code (``time.sleep``, the Django ORM, pandas,
openpyxl) holds the whole event loop: the other jobs, progress saves and the outbox wait
until it returns (the leases do not: ``store.leases`` renews them from a thread). A task
on the loop refreshes a timestamp every ``interval``; a daemon thread compares it with the
clock. The thread is the point: it runs while the loop is stuck, so the warning comes out
during the block (even one that never ends), naming the asyncio task the loop is stuck in
- looked up in the worker's table of running handlers - and the line it is executing.

It cannot see a block that also holds the GIL (a C extension that does not release it):
then the thread runs only after it, and the loop-side tick reports how late it was.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Final

from bgworker.handlers import execution as execution_mod

log = logging.getLogger(__name__)

MAX_INTERVAL: Final = 0.1


def freeze_startup_objects() -> None:
    """Leave what startup made (modules, templates, pools, registries) out of every later
    garbage collection. A full collection walks every tracked object while the loop waits:
    in the latency benchmark each cost the worker 19-65 ms and made a burst of requests late
    (the publish -> claimed tail). Frozen, they are no longer walked; objects that go away
    are still freed by their reference counts (only a cycle made before the freeze would
    stay). The startup garbage is collected first. For a worker process of its own
    (``bgworker worker``): a process that runs workers among other things keeps its GC."""
    gc.collect()
    gc.freeze()


@dataclass(frozen=True)
class _Block:
    since: float  # the last tick before the block (time.monotonic())
    culprit: str


class LoopWatch:
    def __init__(self, threshold: float, execution: execution_mod.Execution) -> None:
        self.threshold = threshold
        self.execution = execution
        self.interval = min(MAX_INTERVAL, threshold / 4)
        self._last = time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0

    async def run(self, stopping: asyncio.Event) -> None:
        """The side task: tick until ``stopping``, with the watching thread beside it."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._last = time.monotonic()
        done = threading.Event()
        watcher = threading.Thread(
            target=self._watch, args=(done,), name="bgworker-loopwatch", daemon=True
        )
        watcher.start()
        try:
            while not stopping.is_set():
                self._last = time.monotonic()
                await asyncio.sleep(self.interval)
        finally:
            done.set()  # the thread notices within one interval; never join it on the loop

    def _watch(self, done: threading.Event) -> None:
        block: _Block | None = None
        while not done.wait(self.interval):
            last = self._last
            if block is None:
                stuck = time.monotonic() - last
                if stuck >= self.threshold:
                    block = _Block(last, self.culprit())
                    log.warning(
                        "event loop blocked for %.1f s so far by %s; other jobs, progress "
                        "and emails wait until it returns (a blocking call in an async handler? "
                        "make it a plain def: see docs/handlers.md)",
                        stuck,
                        block.culprit,
                    )
            elif last != block.since:
                # Ticking again: the block lasted from (at most one interval after) the
                # last tick before it to the first tick after it.
                log.warning(
                    "event loop was blocked for %.1f s by %s", last - block.since, block.culprit
                )
                block = None

    def culprit(self) -> str:
        """What the loop is stuck in, named from the watching thread (the loop is blocked,
        so the task it runs and its frames stand still while we read them)."""
        assert self._loop is not None
        task = asyncio.current_task(self._loop)  # a dict lookup: fine from another thread
        running = list(self.execution.running.values())  # one C-level copy under the GIL
        frame = sys._current_frames().get(self._loop_thread)
        where = ""
        if frame is not None:
            [innermost] = traceback.extract_stack(frame, limit=1)
            where = f" at {innermost.filename}:{innermost.lineno} in {innermost.name}"
        mine = [r for r in running if r.task is not None and r.task is task]
        if mine:
            return f"handler {mine[0].file_type!r} (request {mine[0].request_id}){where}"
        others = ", ".join(f"{r.file_type!r} (request {r.request_id})" for r in running)
        name = task.get_name() if task is not None else "no task"
        return f"{name}{where}, not a handler (handlers running: {others or 'none'})"
