"""Writers that wrap or stand in for a backend's: a synchronous handler's, and the
in-memory ones for unit tests of handlers."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from typing import Protocol

from bgworker.storage import base


class _WritesBlocking(Protocol):
    def write_blocking(self, data: bytes) -> None: ...


def _nothing() -> None:
    return None


class BlockingWriter:
    """The writer a synchronous handler gets, used from its thread: the same temp file or
    upload and the same size and sha256 accounting as the ``Writer`` it wraps (which the
    worker then finishes or aborts on the loop, as for an async handler).

    ``check`` runs before every write and raises once the attempt has ended (the job
    context's ``check``). ``close`` waits for a write in progress and refuses any later one,
    so the worker can abort the temp file while a handler thread that ignored the stop is
    still running.
    """

    def __init__(self, writer: _WritesBlocking, check: Callable[[], None] = _nothing) -> None:
        self._writer = writer
        self._check = check
        self._lock = threading.Lock()
        self._closed = False

    def write(self, data: bytes) -> None:
        self._check()
        with self._lock:
            if self._closed:
                raise base.StorageError("this writer is closed: its attempt has ended")
            self._writer.write_blocking(data)

    def close(self) -> None:
        with self._lock:
            self._closed = True


class _Memory:
    def __init__(self) -> None:
        self._data = bytearray()

    @property
    def data(self) -> bytes:
        return bytes(self._data)

    @property
    def size(self) -> int:
        return len(self._data)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self._data).hexdigest()


class MemoryWriter(_Memory):
    """A ``FileWriter`` that keeps the bytes in memory: for unit tests of async handlers."""

    async def write(self, data: bytes) -> None:
        self._data += data


class SyncMemoryWriter(_Memory):
    """A ``SyncFileWriter`` that keeps the bytes in memory: for unit tests of sync handlers."""

    def write(self, data: bytes) -> None:
        self._data += data
