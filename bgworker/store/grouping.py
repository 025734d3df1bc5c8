"""Group commit: one statement (or transaction) for the calls that arrive together.

The first caller flushes: it runs the flush for everything waiting, then again for what
arrived meanwhile, until nothing waits. The others only wait for the flush that carries
theirs. So a lone call costs what it did (no timer, no added wait), and under load the
round trips per call fall with the number of calls that overlap. Each caller gets its own
result; the calls of one flush fail or succeed together, as their rows do. A flush cut
short (its caller cancelled) fails the calls still waiting with ``ConnectionError``, which
callers treat like a lost connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# Results in the order of the calls given.
Flush = Callable[[list[T]], Awaitable[list[R]]]


class GroupCommit(Generic[T, R]):
    def __init__(self, flush: Flush[T, R]) -> None:
        self._flush_all = flush
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._flushing = False
        # For tests and the bench: flushes run and calls they carried.
        self.flushes = 0
        self.calls = 0

    async def submit(self, call: T) -> R:
        mine: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((call, mine))
        if not self._flushing:
            self._flushing = True
            try:
                while self._waiting:
                    await self._flush()
            finally:
                self._flushing = False
                interrupted, self._waiting = self._waiting, []
                for _, waiting in interrupted:
                    if not waiting.done():
                        waiting.set_exception(ConnectionError("group commit interrupted"))
                if mine.done() and not mine.cancelled():
                    mine.exception()  # read: a cancelled flusher raises its cancellation
        return await mine

    async def _flush(self) -> None:
        batch, self._waiting = self._waiting, []
        try:
            results = await self._flush_all([call for call, _ in batch])
        except BaseException as exc:
            error = exc if isinstance(exc, Exception) else ConnectionError("flush interrupted")
            for _, waiting in batch:
                if not waiting.done():
                    waiting.set_exception(error)
            if not isinstance(exc, Exception):
                raise
            return
        self.flushes += 1
        self.calls += len(batch)
        for (_, waiting), result in zip(batch, results, strict=True):
            if not waiting.done():
                waiting.set_result(result)
