"""Where file bytes live: a local directory with atomic, streaming writes.

A file becomes visible only complete: bytes go to a temp file in the same filesystem, are
fsynced, then renamed into place (rename is atomic on POSIX), and the directory is fsynced
so the rename survives a power cut. Size and sha256 are computed while streaming.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Final, Protocol

BUFFER_SIZE: Final = 1024 * 1024
_KEY_RE: Final = re.compile(r"^[0-9a-f]{2}/[0-9a-f-]{36}\.[0-9a-f]{32}$")


class StorageError(Exception):
    pass


class FileWriter(Protocol):
    """What a handler writes to. Bytes only; the file is never held whole in memory."""

    async def write(self, data: bytes) -> None: ...


class SyncFileWriter(Protocol):
    """What a synchronous handler writes to, from its own thread: ``write`` blocks."""

    def write(self, data: bytes) -> None: ...


def is_key(text: str) -> bool:
    return bool(_KEY_RE.match(text))


def key_for(request_id: uuid.UUID, lease_token: uuid.UUID) -> str:
    """Derived from ids we made, never from user input. The lease token makes each attempt's
    file distinct, so a worker that lost its lease can never overwrite the file served."""
    rid = str(request_id)
    return f"{rid[:2]}/{rid}.{lease_token.hex}"


class LocalWriter:
    def __init__(self, final: Path, temp: Path) -> None:
        self._final = final
        self._temp = temp
        self._file = open(temp, "xb")
        self._hash = hashlib.sha256()
        self._size = 0
        self._buffer = bytearray()

    async def write(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) >= BUFFER_SIZE:
            chunk, self._buffer = bytes(self._buffer), bytearray()
            # Disk writes and hashing block; hashlib and file I/O release the GIL in a thread.
            await asyncio.to_thread(self._write_sync, chunk)

    def write_blocking(self, data: bytes) -> None:
        """``write`` for a caller already off the event loop (``BlockingWriter``)."""
        self._buffer += data
        if len(self._buffer) >= BUFFER_SIZE:
            chunk, self._buffer = bytes(self._buffer), bytearray()
            self._write_sync(chunk)

    def _write_sync(self, chunk: bytes) -> None:
        self._file.write(chunk)
        self._hash.update(chunk)
        self._size += len(chunk)

    async def finish(self) -> tuple[int, str]:
        chunk, self._buffer = bytes(self._buffer), bytearray()
        await asyncio.to_thread(self._finish_sync, chunk)
        return self._size, self._hash.hexdigest()

    def _finish_sync(self, chunk: bytes) -> None:
        self._write_sync(chunk)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._final.parent.mkdir(parents=True, exist_ok=True)
        os.rename(self._temp, self._final)
        _fsync_dir(self._final.parent)

    async def abort(self) -> None:
        await asyncio.to_thread(self._abort_sync)

    def _abort_sync(self) -> None:
        self._file.close()
        self._temp.unlink(missing_ok=True)


def _nothing() -> None:
    return None


class BlockingWriter:
    """The writer a synchronous handler gets, used from its thread: the same temp file and
    the same size and sha256 accounting as the ``LocalWriter`` it wraps (which the worker
    then finishes or aborts on the loop, as for an async handler).

    ``check`` runs before every write and raises once the attempt has ended (the job
    context's ``check``). ``close`` waits for a write in progress and refuses any later one,
    so the worker can abort the temp file while a handler thread that ignored the stop is
    still running.
    """

    def __init__(self, writer: LocalWriter, check: Callable[[], None] = _nothing) -> None:
        self._writer = writer
        self._check = check
        self._lock = threading.Lock()
        self._closed = False

    def write(self, data: bytes) -> None:
        self._check()
        with self._lock:
            if self._closed:
                raise StorageError("this writer is closed: its attempt has ended")
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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._tmp = self.root / ".tmp"

    def ensure(self) -> None:
        self._tmp.mkdir(parents=True, exist_ok=True)

    def writer(self, key: str) -> LocalWriter:
        final = self.path(key)
        temp = self._tmp / f"{final.name}.{uuid.uuid4().hex}.part"
        return LocalWriter(final, temp)

    def path(self, key: str) -> Path:
        # Keys come from our own rows, but check anyway: a path outside root is never served.
        if not _KEY_RE.fullmatch(key):  # fullmatch: `$` alone lets a trailing newline in
            raise StorageError(f"not a storage key: {key!r}")
        return self.root / key

    async def delete(self, key: str) -> bool:
        path = self.path(key)
        try:
            await asyncio.to_thread(path.unlink)
        except FileNotFoundError:
            return False
        return True
