"""The inline build of ``producing``: a handler run in the producer's process, its bytes
handed over through a bounded queue, under its time limit.

The handler writes into a queue of ``depth`` chunks of at most ``CHUNK_SIZE`` bytes that
the response drains; a handler faster than the client waits (an async one at ``await
out.write``, a plain ``def`` on a thread of its own). Closing the stream (the response
ended) stops the handler: ``StoppedError`` at its next write.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import AsyncGenerator
from typing import Final, cast

from bgworker import handlers
from bgworker.handlers import execution

CHUNK_SIZE: Final = 64 * 1024
DEPTH: Final = 8  # chunks queued between the handler and the response
_END: Final = object()


class _Pipe:
    """The writer an inline handler gets: chunks into a bounded queue on the loop
    (an ``execution.Output``)."""

    def __init__(self, ctx: handlers.JobContext, depth: int) -> None:
        self.ctx = ctx
        self.queue: asyncio.Queue[object] = asyncio.Queue(depth)
        self.loop = asyncio.get_running_loop()

    async def write(self, data: bytes) -> None:  # storage.FileWriter
        for start in range(0, len(data), CHUNK_SIZE):
            await self.ctx.check()
            await self.queue.put(bytes(data[start : start + CHUNK_SIZE]))

    def write_blocking(self, data: bytes) -> None:  # storage.SyncFileWriter, on its thread
        for start in range(0, len(data), CHUNK_SIZE):
            chunk = bytes(data[start : start + CHUNK_SIZE])
            put = asyncio.run_coroutine_threadsafe(self.queue.put(chunk), self.loop)
            while True:
                try:
                    if self.loop.is_closed():  # the producer's loop is gone: nobody reads
                        self.ctx.stop(handlers.StoppedError("the event loop closed"))
                    self.ctx.check()  # raises StoppedError once the response ended
                    put.result(timeout=0.25)
                    break
                except concurrent.futures.TimeoutError:
                    continue
                except handlers.StoppedError:
                    put.cancel()
                    raise


async def _build(
    registration: handlers.Registration, ctx: handlers.JobContext, pipe: _Pipe, limit: float | None
) -> None:
    """The handler run as in a worker (``execution``: a plain ``def`` on a daemon thread of
    its own, a hard time limit, told to stop when the stream closes), then the end mark."""
    runner = execution.Execution(None, thread_name="bgworker-inline")
    try:
        await runner.run(registration, ctx, pipe, limit)
    except asyncio.CancelledError:
        # Cancelled by ``stream`` (its reader went away): no end mark, since nobody reads the
        # queue any more, and waiting to put one into a full queue would never return.
        raise
    except BaseException:
        await pipe.queue.put(_END)  # the reader drains the queue, then sees the error
        raise
    await pipe.queue.put(_END)


async def stream(
    registration: handlers.Registration, ctx: handlers.JobContext, depth: int, limit: float | None
) -> AsyncGenerator[bytes, None]:
    pipe = _Pipe(ctx, depth)
    build = asyncio.create_task(
        _build(registration, ctx, pipe, limit), name=f"bgworker-inline-{ctx.id}"
    )
    try:
        while (item := await pipe.queue.get()) is not _END:
            yield cast(bytes, item)
        await build  # the handler's error, if it raised
    finally:
        if not build.done():
            ctx.stop(handlers.StoppedError("the response ended before the file did"))
            build.cancel()
            with contextlib.suppress(BaseException):
                await build


async def then(
    first: bytes | None, rest: AsyncGenerator[bytes, None]
) -> AsyncGenerator[bytes, None]:
    """``first`` (None: the file is empty), then ``rest``; closing this closes ``rest``,
    which stops the handler."""
    try:
        if first is not None:
            yield first
            async for chunk in rest:
                yield chunk
    finally:
        await rest.aclose()
