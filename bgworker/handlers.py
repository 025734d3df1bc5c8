"""File types, the handlers that build them, and how a worker runs them.

A handler reads the request from a ``JobContext`` and streams bytes into a writer; it never
returns the file. It is either a coroutine function, run on the event loop:

    @registry.handler("login_events", max_attempts=3)
    async def login_events(ctx: JobContext, out: storage.FileWriter) -> None: ...

or a plain function, run on a thread of its own so blocking libraries (the Django ORM,
openpyxl, pandas) never stop the loop, its heartbeats or the other jobs:

    @registry.handler("ledger", time_limit=600)
    def ledger(ctx: JobContext, out: storage.SyncFileWriter) -> None: ...

Why threads and not a process pool (docs/handlers.md has the long form): the writer streams
bytes to a temp file while hashing them, and handlers close over module state, connections
and the job context; a process would need all of it pickled and every byte sent through a
pipe. A thread keeps the API. What a thread cannot do is die on request: CPython has no way
to kill one, so a synchronous handler is *told* to stop (its next ``out.write`` or
``ctx.check()`` raises) and its attempt ends at once without it.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import inspect
import logging
import math
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Any, TypeVar, cast
from zoneinfo import ZoneInfo

from pydantic import JsonValue

from bgworker import events, storage

log = logging.getLogger(__name__)

Progress = Callable[[float], None]


class PermanentError(Exception):
    """Raised by a handler when retrying cannot help (bad criteria...): straight to failed."""


class UnknownFileTypeError(LookupError):
    pass


class StoppedError(Exception):
    """Raised inside a synchronous handler, by ``out.write`` or ``ctx.check()``, once its
    attempt has ended (time limit, cancel, lease lost, worker shutting down). Let it
    propagate: nothing the handler does afterwards is kept."""


class TimeLimitError(StoppedError):
    """The handler ran past its time limit. It is the attempt's error (error_class
    ``TimeLimitError``), so the attempt is retried or failed by the usual rules."""

    def __init__(self, limit: float) -> None:
        super().__init__(f"exceeded its time limit of {float(limit)} s")
        self.limit = limit


@dataclass
class JobContext:
    request: events.FileRequested
    attempt: int = 1
    worker_id: str = "local"
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("bgworker.job"))
    _progress: float = field(default=0.0, repr=False)
    # Set (from the event loop) when the attempt ends before the handler returned. A
    # threading.Event, because synchronous handlers read it from their own thread.
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _stop_reason: StoppedError | None = field(default=None, repr=False)

    @property
    def id(self) -> uuid.UUID:
        return self.request.id

    @property
    def criteria(self) -> dict[str, JsonValue]:
        return self.request.criteria

    @property
    def requester(self) -> events.Requester | None:
        return self.request.requester

    @property
    def language(self) -> str:
        return self.requester.language if self.requester else "en"

    @property
    def timezone(self) -> tzinfo:
        return ZoneInfo(self.requester.timezone if self.requester else "UTC")

    @property
    def progress(self) -> float:
        return self._progress

    def report_progress(self, done: float, total: float = 1.0) -> None:
        """Cheap to call often, from the loop or a handler thread (one float assignment):
        the value is written to PostgreSQL with the next heartbeat."""
        if total > 0:
            self._progress = max(0.0, min(1.0, done / total))

    @property
    def cancelled(self) -> bool:
        """True once the attempt has ended (time limit, cancel, lease lost, shutdown). A
        synchronous handler that computes long between writes polls it, or ``check()``."""
        return self._stop.is_set()

    def check(self) -> None:
        """Raise ``StoppedError`` (``TimeLimitError`` at the time limit) once the attempt has
        ended; return at once otherwise."""
        reason = self._stop_reason
        if self._stop.is_set() and reason is not None:
            raise reason.with_traceback(None)

    def stop(self, reason: StoppedError) -> None:
        """Tell the handler its attempt is over (called by the worker; safe from any thread)."""
        if not self._stop.is_set():
            self._stop_reason = reason
            self._stop.set()


AsyncHandler = Callable[[JobContext, storage.FileWriter], Awaitable[None]]
SyncHandler = Callable[[JobContext, storage.SyncFileWriter], None]
Handler = AsyncHandler | SyncHandler
H = TypeVar("H", bound=Handler)


def _is_async(fn: object) -> bool:
    # A class instance with `async def __call__` is async too; inspect looks at functions
    # (and functools.partial of them) only.
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - we want the method, not callable()
    )


@dataclass(frozen=True)
class Registration:
    file_type: str
    handler: Handler
    max_attempts: int | None
    # Seconds; None: the worker's default (BGWORKER_WORKER__TIME_LIMIT_SECONDS); 0: none.
    time_limit: float | None = None
    # A plain function, run on a handler thread instead of the event loop.
    sync: bool = False


class Registry:
    def __init__(self) -> None:
        self._by_type: dict[str, Registration] = {}

    def register(
        self,
        file_type: str,
        handler: Handler,
        *,
        max_attempts: int | None = None,
        time_limit: float | None = None,
        sync: bool | None = None,
    ) -> None:
        """``sync`` defaults to "not a coroutine function"; say ``sync=False`` for a plain
        callable that returns an awaitable."""
        if file_type in self._by_type:
            raise ValueError(f"file type {file_type!r} is already registered")
        is_async = _is_async(handler)
        if sync is None:
            sync = not is_async
        elif sync and is_async:
            raise TypeError(f"handler for {file_type!r} is async: sync=True is for plain def")
        if time_limit is not None and not (time_limit >= 0 and math.isfinite(time_limit)):
            raise ValueError(
                f"time_limit must be a number of seconds >= 0 (0: none), got {time_limit!r}"
            )
        self._by_type[file_type] = Registration(file_type, handler, max_attempts, time_limit, sync)

    def handler(
        self,
        file_type: str,
        *,
        max_attempts: int | None = None,
        time_limit: float | None = None,
        sync: bool | None = None,
    ) -> Callable[[H], H]:
        def decorate(fn: H) -> H:
            self.register(
                file_type, fn, max_attempts=max_attempts, time_limit=time_limit, sync=sync
            )
            return fn

        return decorate

    def find(self, file_type: str) -> Registration | None:
        return self._by_type.get(file_type)

    @property
    def file_types(self) -> list[str]:
        return sorted(self._by_type)

    def merge(self, other: Registry) -> None:
        for reg in other._by_type.values():
            self.register(
                reg.file_type,
                reg.handler,
                max_attempts=reg.max_attempts,
                time_limit=reg.time_limit,
                sync=reg.sync,
            )


def load(paths: Iterable[str]) -> Registry:
    """Build one registry from ``module:attribute`` import paths (settings.handlers)."""
    combined = Registry()
    for path in paths:
        module_name, _, attr = path.partition(":")
        module: Any = importlib.import_module(module_name)
        found = getattr(module, attr or "registry", None)
        if not isinstance(found, Registry):
            raise TypeError(f"{path!r} is not a bgworker.handlers.Registry")
        combined.merge(found)
    return combined


@dataclass(frozen=True)
class Running:
    """One handler call in progress (read by the loop watchdog, from its own thread)."""

    request_id: uuid.UUID
    file_type: str
    sync: bool
    started: float  # time.monotonic()
    task: asyncio.Task[Any] | None  # the asyncio task the handler (or its wait) runs in


class Execution:
    """Runs one worker's handlers: async ones on the event loop, sync ones on at most
    ``threads`` daemon threads (the worker's concurrency), each under its time limit.

    Not ``loop.run_in_executor(None, ...)``: the default executor is shared with file I/O
    (``asyncio.to_thread`` in storage), so long handlers would starve it, and its threads
    are joined at interpreter exit, so one runaway handler would keep a stopped worker
    process alive. Here a thread per call, bounded by a semaphore, daemon.
    """

    def __init__(self, threads: int, default_time_limit: float = 0) -> None:
        self.threads = threads
        self.default_time_limit = default_time_limit
        self.running: dict[uuid.UUID, Running] = {}
        # Threads still running a handler whose attempt already ended (time limit, cancel):
        # each keeps its thread slot until the handler returns.
        self.abandoned = 0
        self._free = asyncio.Semaphore(threads)

    def time_limit(self, registration: Registration) -> float | None:
        limit = registration.time_limit
        if limit is None:
            limit = self.default_time_limit
        return limit or None  # 0: no limit

    async def call(
        self, registration: Registration, ctx: JobContext, out: storage.LocalWriter
    ) -> None:
        """Run the handler to completion; raise ``TimeLimitError`` when it runs past its
        limit, or its own exception. On any early end (time limit, cancellation) the handler
        is told to stop and, if it is on a thread, can no longer write to ``out`` once this
        returns, so the caller may abort ``out`` at once."""
        limit = self.time_limit(registration)
        blocking = storage.BlockingWriter(out, ctx.check) if registration.sync else None
        self.running[ctx.id] = Running(
            ctx.id,
            registration.file_type,
            registration.sync,
            time.monotonic(),
            asyncio.current_task(),
        )
        deadline = asyncio.timeout(limit)
        try:
            async with deadline:
                if blocking is not None:
                    await self._in_thread(cast(SyncHandler, registration.handler), ctx, blocking)
                else:
                    await cast(AsyncHandler, registration.handler)(ctx, out)
        except TimeoutError:
            if not deadline.expired():
                raise  # the handler's own TimeoutError (a network call...): an ordinary error
            assert limit is not None
            error = TimeLimitError(limit)
            await self._stop(ctx, blocking, error)
            raise error from None
        except asyncio.CancelledError:
            await self._stop(ctx, blocking, StoppedError("the attempt was stopped"))
            raise
        finally:
            self.running.pop(ctx.id, None)

    async def _stop(
        self, ctx: JobContext, blocking: storage.BlockingWriter | None, reason: StoppedError
    ) -> None:
        ctx.stop(reason)
        if blocking is not None:
            # Waits for a write in progress (one buffer flush), on a thread so the loop does
            # not; later writes raise. Then the caller can abort the temp file safely.
            await asyncio.to_thread(blocking.close)

    async def _in_thread(
        self, handler: SyncHandler, ctx: JobContext, out: storage.BlockingWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        if self._free.locked() and self.abandoned:
            log.warning(
                "request %s waits for a handler thread: %d of %d are held by handlers whose "
                "attempt already ended (they ignored the stop)",
                ctx.id,
                self.abandoned,
                self.threads,
            )
        await self._free.acquire()
        done: asyncio.Future[None] = loop.create_future()
        stopped_at: list[float] = []

        def settle(error: BaseException | None) -> None:  # on the loop, once the call returned
            self._free.release()
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

        # The job's context (its log fields, bgworker.logs) goes with it onto the thread.
        job_context = contextvars.copy_context()
        thread = threading.Thread(
            target=job_context.run, args=(target,), name=f"bgworker-handler-{ctx.id}", daemon=True
        )
        try:
            thread.start()
        except BaseException:
            self._free.release()
            raise
        try:
            await done
        except asyncio.CancelledError:
            if done.cancelled():  # the thread is (or was just) still running: let it go
                self.abandoned += 1
                stopped_at.append(time.monotonic())
            raise


def _call_sync(
    handler: SyncHandler, ctx: JobContext, out: storage.BlockingWriter
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
