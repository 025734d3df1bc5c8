"""The local backend: a directory with atomic, streaming writes.

A file becomes visible only complete: bytes go to a temp file in the same filesystem, are
fsynced, then renamed into place (rename is atomic on POSIX), and the directory is fsynced
so the rename survives a power cut. Size and sha256 are computed while streaming.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from pathlib import Path
from typing import Final

from bgworker.storage import base

BUFFER_SIZE: Final = 1024 * 1024


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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStorage:
    backend: Final = "local"

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
        # A path outside root is never served: only our own keys name a path.
        return self.root / base.check_key(key)

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self.path(key).is_file)

    async def size(self, key: str) -> int:
        return await asyncio.to_thread(_size, self.path(key))

    async def stale(self, older_than: float) -> base.Stale:
        return await asyncio.to_thread(self._scan, older_than)

    def _scan(self, older_than: float) -> base.Stale:
        found = base.Stale()
        for path in self.root.rglob("*"):
            if not path.is_file() or path.stat().st_mtime >= older_than:
                continue
            relative = path.relative_to(self.root).as_posix()
            if relative.startswith(".tmp/"):
                found.parts.append(relative)
            elif base.is_key(relative):
                found.keys.append(relative)
        return found

    async def remove_part(self, part: str) -> int:
        # Only a temp part's name, as _scan made it: never a path that leaves .tmp.
        name = part.removeprefix(".tmp/")
        if "/" in name or not name.endswith(".part"):
            raise base.StorageError(f"not a temp part: {part!r}")
        return await asyncio.to_thread(_unlink, self._tmp / name)

    async def delete(self, key: str) -> bool:
        path = self.path(key)
        try:
            await asyncio.to_thread(path.unlink)
        except FileNotFoundError:
            return False
        return True


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _unlink(path: Path) -> int:
    try:
        size = path.stat().st_size
        path.unlink()
    except FileNotFoundError:
        return 0
    return size
