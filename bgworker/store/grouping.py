"""Group commit: one statement (or transaction) for the calls that arrive together.

A call that finds no flush running starts one, as a task of its own: it flushes everything
waiting, then again what arrived meanwhile, until nothing waits. Every caller just waits
for the flush that carries its call. So a lone call costs what it did (no timer, no added
wait), and under load the round trips per call fall with the number of calls that
overlap. Each caller gets its own result; the calls of one flush fail or succeed together,
as their rows do. A caller cancelled while it waits leaves the flush running for the
others (its own call may still commit, as a statement already sent would have).
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
        self._flusher: asyncio.Task[None] | None = None
        # For tests and the bench: flushes run and calls they carried.
        self.flushes = 0
        self.calls = 0

    async def submit(self, call: T) -> R:
        mine: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((call, mine))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_waiting(), name="group-commit")
        return await mine

    async def _flush_waiting(self) -> None:
        try:
            while self._waiting:
                await self._flush()
        finally:
            self._flusher = None
            left, self._waiting = self._waiting, []  # only if this task itself was cancelled
            for _, waiting in left:
                if not waiting.done():
                    waiting.set_exception(ConnectionError("group commit stopped"))

    async def _flush(self) -> None:
        batch, self._waiting = self._waiting, []
        try:
            results = await self._flush_all([call for call, _ in batch])
        except BaseException as exc:
            error = exc if isinstance(exc, Exception) else ConnectionError("group commit stopped")
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
