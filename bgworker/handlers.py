"""File types and the handlers that build them.

A handler is ``async def build(ctx: JobContext, out: FileWriter) -> None``: it reads the
request from ``ctx`` and streams bytes into ``out``. It never returns the file.

    registry = Registry()

    @registry.handler("login_events", max_attempts=3)
    async def login_events(ctx, out): ...
"""

from __future__ import annotations

import importlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import JsonValue

from bgworker import events, storage

Progress = Callable[[float], None]


class PermanentError(Exception):
    """Raised by a handler when retrying cannot help (bad criteria...): straight to failed."""


class UnknownFileTypeError(LookupError):
    pass


@dataclass
class JobContext:
    request: events.FileRequested
    attempt: int
    worker_id: str
    logger: logging.Logger
    _progress: float = field(default=0.0, repr=False)

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
        """Cheap to call often: the value is written to PostgreSQL with the next heartbeat."""
        if total > 0:
            self._progress = max(0.0, min(1.0, done / total))


Handler = Callable[[JobContext, storage.FileWriter], Awaitable[None]]


@dataclass(frozen=True)
class Registration:
    file_type: str
    handler: Handler
    max_attempts: int | None


class Registry:
    def __init__(self) -> None:
        self._by_type: dict[str, Registration] = {}

    def register(
        self, file_type: str, handler: Handler, *, max_attempts: int | None = None
    ) -> None:
        if file_type in self._by_type:
            raise ValueError(f"file type {file_type!r} is already registered")
        self._by_type[file_type] = Registration(file_type, handler, max_attempts)

    def handler(
        self, file_type: str, *, max_attempts: int | None = None
    ) -> Callable[[Handler], Handler]:
        def decorate(fn: Handler) -> Handler:
            self.register(file_type, fn, max_attempts=max_attempts)
            return fn

        return decorate

    def get(self, file_type: str) -> Registration:
        try:
            return self._by_type[file_type]
        except KeyError:
            known = ", ".join(sorted(self._by_type)) or "none"
            raise UnknownFileTypeError(
                f"no handler for file_type {file_type!r} (registered: {known})"
            ) from None

    def find(self, file_type: str) -> Registration | None:
        return self._by_type.get(file_type)

    def __contains__(self, file_type: object) -> bool:
        return file_type in self._by_type

    @property
    def file_types(self) -> list[str]:
        return sorted(self._by_type)

    def merge(self, other: Registry) -> None:
        for reg in other._by_type.values():
            self.register(reg.file_type, reg.handler, max_attempts=reg.max_attempts)


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
