"""File types, the handlers that build them, the context they get, and the resources they
share.

A handler reads the request from a ``JobContext`` and streams bytes into a writer; it never
returns the file. It is a coroutine function, run on the event loop, or a plain function,
run on a thread of its own (see ``execution``) so blocking libraries never stop the loop:

    @registry.handler("ledger", time_limit=600, extension="csv", content_type="text/csv")
    def ledger(ctx: JobContext, out: storage.SyncFileWriter) -> None: ...

Resources a handler needs for every job (a database pool, an HTTP client) are opened once
per worker process by the registry's lifespan, an async context manager, like Starlette's
and FastStream's: what it yields reaches every handler as ``ctx.resources``.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import tzinfo
from types import MappingProxyType
from typing import Any, Final, TypeVar, cast
from zoneinfo import ZoneInfo

import pydantic
from pydantic import JsonValue

from bgworker import settings as settings_mod
from bgworker import storage
from bgworker.contract import event_fields, events
from bgworker.contract import progress as progress_mod
from bgworker.handlers import errors

T = TypeVar("T")
NO_RESOURCES: Final[Mapping[str, Any]] = MappingProxyType({})


PermanentError = errors.PermanentError
UnknownFileTypeError = errors.UnknownFileTypeError
StoppedError = errors.StoppedError
LifespanError = errors.LifespanError
TimeLimitError = errors.TimeLimitError


@dataclass
class JobContext:
    request: events.FileRequested
    attempt: int = 1
    worker_id: str = "local"
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("bgworker.job"))
    # The worker's settings and what the registries' lifespans yielded (read-only), shared
    # by every job of the worker process. Unit tests pass their own.
    settings: settings_mod.Settings | None = None
    resources: Mapping[str, Any] = field(default_factory=lambda: NO_RESOURCES)
    _progress: progress_mod.Progress | None = field(default=None, repr=False)
    # time.monotonic() past which check() raises TimeLimitError (set by the execution).
    _deadline: float | None = field(default=None, repr=False)
    _limit: float = field(default=0.0, repr=False)
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

    def resource(self, name: str, kind: type[T]) -> T:
        """``ctx.resources[name]``, checked to be a ``kind``: typed access for mypy."""
        try:
            value = self.resources[name]
        except KeyError:
            known = ", ".join(sorted(self.resources)) or "none"
            raise LookupError(
                f"no resource {name!r} (resources: {known}); does a lifespan of the "
                "registry yield it?"
            ) from None
        if not isinstance(value, kind):
            raise TypeError(f"resource {name!r} is a {type(value).__name__}, not {kind.__name__}")
        return value

    # -- progress -------------------------------------------------------------------------

    def progress(self, done: int, total: int | None = None) -> None:
        """Report ``done`` of ``total`` objects (rows, records, pages). Cheap to call often,
        from the loop or a handler thread (one assignment): the worker saves the last value
        at most about once a second. Raises ``ValueError`` on negative counts or done >
        total."""
        self._progress = progress_mod.of(done, total)

    def report_progress(self, done: float, total: float = 1.0) -> None:
        """The older form, kept: counts when both are integers (0 <= done <= total), else
        the fraction ``done/total`` clamped to 0..1."""
        if isinstance(done, int) and isinstance(total, int) and 0 <= done <= total:
            self._progress = progress_mod.of(done, total)
        elif total > 0:
            with contextlib.suppress(ArithmeticError):
                fraction = max(0.0, min(1.0, done / total))
                if math.isfinite(fraction):
                    self._progress = progress_mod.Progress(None, None, fraction)

    @property
    def reported(self) -> progress_mod.Progress | None:
        """The last progress reported, or None."""
        return self._progress

    # -- stopping -------------------------------------------------------------------------

    @property
    def cancelled(self) -> bool:
        """True once the attempt has ended (time limit, cancel, lease lost, shutdown). A
        handler that computes long between writes polls it, or ``check()``."""
        return self._stop.is_set()

    def check(self) -> errors.Checked:
        """Raise ``StoppedError`` once the attempt has ended (``TimeLimitError`` past the
        time limit, even before the worker noticed). Otherwise return at once; in an async
        handler ``await ctx.check()`` also gives the event loop a turn."""
        reason = self._stop_reason
        if self._stop.is_set() and reason is not None:
            raise reason.with_traceback(None)
        if self._deadline is not None and time.monotonic() >= self._deadline:
            error = TimeLimitError(self._limit)
            self.stop(error)
            raise error
        return errors.CHECKED

    def start(self, limit: float | None) -> None:
        """The attempt starts now, with this time limit in seconds (called by the worker)."""
        if limit:
            self._limit = limit
            self._deadline = time.monotonic() + limit

    def stop(self, reason: StoppedError) -> None:
        """Tell the handler its attempt is over (called by the worker; safe from any thread)."""
        if not self._stop.is_set():
            self._stop_reason = reason
            self._stop.set()


AsyncHandler = Callable[[JobContext, storage.FileWriter], Awaitable[None]]
SyncHandler = Callable[[JobContext, storage.SyncFileWriter], None]
Handler = AsyncHandler | SyncHandler
H = TypeVar("H", bound=Handler)
# A lifespan gets the worker's settings and yields the resources it opened (or None).
Lifespan = Callable[[settings_mod.Settings], AbstractAsyncContextManager[Mapping[str, Any] | None]]
L = TypeVar("L", bound=Callable[..., Any])
Estimate = Callable[[dict[str, JsonValue]], float]

# RFC 9110 token characters would allow more; a file name extension is kept to what every
# file system and mail client shows plainly.
_EXTENSION: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,15}$")


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
    # What the handler makes, for requests that leave filename or content_type out.
    extension: str | None = None
    content_type: str | None = None
    # Dedupe by content (see ``dedupe``): identical requests within this many seconds of a
    # build reuse its file. None: every request builds.
    dedupe_seconds: float | None = None
    # criteria -> an estimate of the work (rows, bytes) for producing.inline_or_delay.
    estimate: Estimate | None = None


def _valid_content_type(value: str) -> str:
    # The same rule as FileRequested.content_type (RFC 9110 media type, header-safe).
    adapter: pydantic.TypeAdapter[str] = pydantic.TypeAdapter(event_fields.ContentType)
    try:
        return adapter.validate_python(value)
    except pydantic.ValidationError as exc:
        raise ValueError(f"content_type {value!r}: {exc.errors()[0]['msg']}") from None


def _as_lifespan(fn: Callable[..., Any]) -> Lifespan:
    # An async generator function is wrapped as contextlib.asynccontextmanager would.
    if inspect.isasyncgenfunction(fn):
        return cast(Lifespan, contextlib.asynccontextmanager(fn))
    return cast(Lifespan, fn)


class Registry:
    def __init__(self, *, lifespan: Callable[..., Any] | None = None) -> None:
        self._by_type: dict[str, Registration] = {}
        self._lifespans: list[Lifespan] = []
        if lifespan is not None:
            self.lifespan(lifespan)

    def register(
        self,
        file_type: str,
        handler: Handler,
        *,
        max_attempts: int | None = None,
        time_limit: float | None = None,
        sync: bool | None = None,
        extension: str | None = None,
        content_type: str | None = None,
        dedupe_seconds: float | None = None,
        estimate: Estimate | None = None,
    ) -> None:
        """``sync`` defaults to "not a coroutine function"; say ``sync=False`` for a plain
        callable that returns an awaitable. ``extension`` and ``content_type`` fill requests
        that leave ``filename`` or ``content_type`` out; ``dedupe_seconds`` and ``estimate``:
        see ``Registration``."""
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
        if extension is not None and not _EXTENSION.fullmatch(extension):
            raise ValueError(
                f"extension must be 1-16 letters, digits, '_' or '-' without the dot, "
                f"got {extension!r}"
            )
        if content_type is not None:
            content_type = _valid_content_type(content_type)
        if dedupe_seconds is not None and not (
            dedupe_seconds > 0 and math.isfinite(dedupe_seconds)
        ):
            raise ValueError(f"dedupe_seconds must be > 0 seconds, got {dedupe_seconds!r}")
        self._by_type[file_type] = Registration(
            file_type,
            handler,
            max_attempts,
            time_limit,
            sync,
            extension,
            content_type,
            dedupe_seconds,
            estimate,
        )

    def handler(
        self,
        file_type: str,
        *,
        max_attempts: int | None = None,
        time_limit: float | None = None,
        sync: bool | None = None,
        extension: str | None = None,
        content_type: str | None = None,
        dedupe_seconds: float | None = None,
        estimate: Estimate | None = None,
    ) -> Callable[[H], H]:
        def decorate(fn: H) -> H:
            self.register(
                file_type,
                fn,
                max_attempts=max_attempts,
                time_limit=time_limit,
                sync=sync,
                extension=extension,
                content_type=content_type,
                dedupe_seconds=dedupe_seconds,
                estimate=estimate,
            )
            return fn

        return decorate

    def lifespan(self, fn: L) -> L:
        """Register a lifespan: ``fn(settings)`` is an async context manager (or an async
        generator function) that opens shared resources, yields them as a mapping, and
        closes them when the worker exits, after its drain. Usable as a decorator."""
        self._lifespans.append(_as_lifespan(fn))
        return fn

    def find(self, file_type: str) -> Registration | None:
        return self._by_type.get(file_type)

    def all_sync(self) -> bool:
        """Every handler is a plain ``def`` (none registered: False)."""
        return bool(self._by_type) and all(r.sync for r in self._by_type.values())

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
                extension=reg.extension,
                content_type=reg.content_type,
                dedupe_seconds=reg.dedupe_seconds,
                estimate=reg.estimate,
            )
        self._lifespans.extend(other._lifespans)

    @contextlib.asynccontextmanager
    async def resources(self, settings: settings_mod.Settings) -> AsyncIterator[Mapping[str, Any]]:
        """Run every lifespan in registration order and yield what they opened, as one
        read-only mapping; on exit close them in reverse order (``AsyncExitStack``). Two
        lifespans yielding the same name is an error: one would hide the other."""
        merged: dict[str, Any] = {}
        async with contextlib.AsyncExitStack() as stack:
            for lifespan in self._lifespans:
                name = getattr(lifespan, "__qualname__", repr(lifespan))
                opened = await stack.enter_async_context(lifespan(settings))
                if opened is None:
                    continue
                if not isinstance(opened, Mapping):
                    raise TypeError(
                        f"lifespan {name} yielded a {type(opened).__name__}: "
                        "yield a mapping of resource names (or nothing)"
                    )
                if clash := sorted(set(opened) & set(merged)):
                    raise ValueError(
                        f"lifespan {name} yields {', '.join(map(repr, clash))}, "
                        "already yielded by another lifespan"
                    )
                merged.update(opened)
            yield MappingProxyType(merged)


def served_names(event: events.FileRequested, registration: Registration | None) -> tuple[str, str]:
    """(filename, content_type) to serve: the event's, else ``<file_type>.<extension>`` and
    the content type its handler declares (else ``<file_type>``, application/octet-stream).
    Deterministic, so every delivery of a request gets the same."""
    extension = registration.extension if registration else None
    declared = registration.content_type if registration else None
    return (
        event.filename or (f"{event.file_type}.{extension}" if extension else event.file_type),
        event.content_type or declared or events.DEFAULT_CONTENT_TYPE,
    )


def with_defaults(
    event: events.FileRequested, registration: Registration | None
) -> events.FileRequested:
    """The event as its handler sees it: ``served_names`` filled in."""
    filename, content_type = served_names(event, registration)
    return event.model_copy(update={"filename": filename, "content_type": content_type})


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
