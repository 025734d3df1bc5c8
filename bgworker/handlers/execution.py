"""How handler code runs, in a worker and in an inline build (``producing``): async
handlers on the event loop, sync ones on threads of their own, each under its time limit,
told to stop when their attempt ends early.

Why threads and not a process pool (docs/handlers.md has the long form): the writer streams
bytes to a temp file while hashing them, and handlers close over module state, connections
and the job context; a process would need all of it pickled and every byte sent through a
pipe. A thread keeps the API. What a thread cannot do is die on request: CPython has no way
to kill one, so a synchronous handler is *told* to stop (its next ``out.write`` or
``ctx.check()`` raises) and its attempt ends at once without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol, cast

from bgworker import handlers, storage

log = logging.getLogger(__name__)

_NO_DEADLINE: Final = contextlib.nullcontext()


def time_limit(registration: handlers.Registration, default: float) -> float | None:
    """A handler's time limit in seconds: its file type's, else ``default`` (the
    deployment's ``worker.time_limit_seconds``); None for none (a limit of 0)."""
    limit = registration.time_limit
    if limit is None:
        limit = default
    return limit or None


class Output(Protocol):
    """Where a handler's bytes go: a storage ``Writer`` in a worker, the response's queue
    inline. ``write_blocking`` is for a sync handler, on its thread."""

    async def write(self, data: bytes) -> None: ...

    def write_blocking(self, data: bytes) -> None: ...


@dataclass(frozen=True)
class Running:
    """One handler call in progress (read by the loop watchdog, from its own thread)."""

    request_id: uuid.UUID
    file_type: str
    sync: bool
    started: float  # time.monotonic()
    task: asyncio.Task[Any] | None  # the asyncio task the handler (or its wait) runs in


class Execution:
    """Runs handlers: async ones on the event loop, sync ones on daemon threads, at most
    ``threads`` at once (a worker's concurrency; None: unbounded, an inline build's),
    each under its time limit.

    Not ``loop.run_in_executor(None, ...)``: the default executor is shared with file I/O
    (``asyncio.to_thread`` in storage), so long handlers would starve it, and its threads
    are joined at interpreter exit, so one runaway handler would keep a stopped worker
    process alive. Here a thread per call, bounded by a semaphore, daemon.
    """

    def __init__(
        self,
        threads: int | None,
        default_time_limit: float = 0,
        *,
        thread_name: str = "bgworker-handler",
    ) -> None:
        self.threads = threads
        self.default_time_limit = default_time_limit
        self.thread_name = thread_name  # a thread is named f"{thread_name}-{request id}"
        self.running: dict[uuid.UUID, Running] = {}
        # Threads still running a handler whose attempt already ended (time limit, cancel):
        # each keeps its thread slot until the handler returns.
        self.abandoned = 0
        self._free = asyncio.Semaphore(threads) if threads is not None else None

    def time_limit(self, registration: handlers.Registration) -> float | None:
        return time_limit(registration, self.default_time_limit)

    async def call(
        self,
        registration: handlers.Registration,
        ctx: handlers.JobContext,
        out: Output,
    ) -> None:
        """``run`` under the handler's own time limit, else this execution's default."""
        await self.run(registration, ctx, out, self.time_limit(registration))

    async def run(
        self,
        registration: handlers.Registration,
        ctx: handlers.JobContext,
        out: Output,
        limit: float | None,
    ) -> None:
        """Run the handler to completion; raise ``TimeLimitError`` when it runs past
        ``limit`` seconds (None: no limit), or its own exception. On any early end (time
        limit, cancellation) the handler is told to stop and, if it is on a thread, can no
        longer write to ``out`` once this returns, so the caller may abort ``out`` at once."""
        ctx.start(limit)  # ctx.check() raises past it, even before the timer below fires

        def check() -> None:
            ctx.check()  # raises once the attempt has ended; its awaitable is for async code

        blocking = storage.BlockingWriter(out, check) if registration.sync else None
        self.running[ctx.id] = Running(
            ctx.id,
            registration.file_type,
            registration.sync,
            time.monotonic(),
            asyncio.current_task(),
        )
        # No limit: no timeout object to enter and leave (each looks up the running task and
        # loop, several times per job; BENCHMARKS.md, issue 11).
        deadline = asyncio.timeout(limit) if limit is not None else None
        try:
            async with deadline if deadline is not None else _NO_DEADLINE:
                if blocking is not None:
                    await self._in_thread(
                        cast(handlers.SyncHandler, registration.handler), ctx, blocking
                    )
                else:
                    await cast(handlers.AsyncHandler, registration.handler)(ctx, out)
        except TimeoutError:
            if deadline is None or not deadline.expired():
                raise  # the handler's own TimeoutError (a network call...): an ordinary error
            assert limit is not None
            error = handlers.TimeLimitError(limit)
            await self._stop(ctx, blocking, error)
            raise error from None
        except asyncio.CancelledError:
            await self._stop(ctx, blocking, handlers.StoppedError("the attempt was stopped"))
            raise
        finally:
            self.running.pop(ctx.id, None)

    async def _stop(
        self,
        ctx: handlers.JobContext,
        blocking: storage.BlockingWriter | None,
        reason: handlers.StoppedError,
    ) -> None:
        ctx.stop(reason)
        if blocking is not None:
            # Waits for a write in progress (one buffer flush), on a thread so the loop does
            # not; later writes raise. Then the caller can abort the temp file safely.
            await asyncio.to_thread(blocking.close)

    async def _take_thread(self, ctx: handlers.JobContext) -> None:
        if self._free is None:
            return  # unbounded
        if self._free.locked() and self.abandoned:
            log.warning(
                "request %s waits for a handler thread: %d of %d are held by handlers whose "
                "attempt already ended (they ignored the stop)",
                ctx.id,
                self.abandoned,
                self.threads,
            )
        await self._free.acquire()

    def _give_thread(self) -> None:
        if self._free is not None:
            self._free.release()

    async def _in_thread(
        self, handler: handlers.SyncHandler, ctx: handlers.JobContext, out: storage.BlockingWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        await self._take_thread(ctx)
        done: asyncio.Future[None] = loop.create_future()
        stopped_at: list[float] = []

        def settle(error: BaseException | None) -> None:  # on the loop, once the call returned
            self._give_thread()
            if done.cancelled():
                self.abandoned -= 1
                late = time.monotonic() - stopped_at[0] if stopped_at else 0.0
                log.info(
                    "request %s: its handler thread returned %.1f s after its attempt ended",
                    ctx.id,
                    late,
                )
            elif error is None:
                done.set_result(None)
            else:
                done.set_exception(error)

        def target() -> None:
            error = _call_sync(handler, ctx, out)
            try:
                loop.call_soon_threadsafe(settle, error)
            except RuntimeError:
                pass  # the loop is closed: the worker is gone, nobody waits for this call

        # The job's context (its log fields, bgworker.observe.logs) goes with it onto the thread.
        job_context = contextvars.copy_context()
        thread = threading.Thread(
            target=job_context.run,
            args=(target,),
            name=f"{self.thread_name}-{ctx.id}",
            daemon=True,
        )
        try:
            thread.start()
        except BaseException:
            self._give_thread()
            raise
        try:
            await done
        except asyncio.CancelledError:
            if done.cancelled():  # the thread is (or was just) still running: let it go
                self.abandoned += 1
                stopped_at.append(time.monotonic())
            raise


def _call_sync(
    handler: handlers.SyncHandler, ctx: handlers.JobContext, out: storage.BlockingWriter
) -> BaseException | None:
    """Run a synchronous handler on the current thread; its error, if any, to hand back."""
    try:
        # Typed to return None; a mis-registered async callable returns a coroutine.
        result = cast(Callable[..., object], handler)(ctx, out)
    except BaseException as exc:  # everything goes back to the loop
        return exc if isinstance(exc, Exception) else RuntimeError(repr(exc))
    if inspect.isawaitable(result):
        if inspect.iscoroutine(result):
            result.close()  # never awaited: close it, no RuntimeWarning
        return TypeError(
            f"the {ctx.request.file_type!r} handler returned an awaitable: "
            "register it with sync=False"
        )
    return None
