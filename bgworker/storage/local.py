"""The local backend: a directory with atomic, streaming writes.

A file becomes visible only complete: bytes go to a temp file in the same filesystem, are
fsynced, then renamed into place (rename is atomic on POSIX), and the directory is fsynced
so the rename survives a power cut. Size and sha256 are computed while streaming.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from bgworker.storage import base

BUFFER_SIZE: Final = 1024 * 1024
# A file up to this size, on a filesystem held in memory, is finished on the event loop.
INLINE_MAX: Final = 64 * 1024
# Filesystems with no backing store: fsync returns at once and nothing waits for a disk.
IN_MEMORY: Final = frozenset({"tmpfs", "ramfs"})
# What open(path, "xb") asks for: a new file only, not inherited by child processes.
_CREATE: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


class LocalWriter:
    """The temp file is created with the first bytes that leave the buffer, on the thread
    that writes them: a small file is created, written, fsynced and renamed in one thread
    hop (``finish``), and the event loop never opens a file. A writer aborted before then
    has nothing on disk to remove."""

    def __init__(self, final: Path, temp: Path, *, inline: bool = False) -> None:
        self._final = final
        self._temp = temp
        self._inline = inline  # small files may be finished without a thread hop
        self._fd: int | None = None
        # A write or finish was handed to a thread (or made on a handler's): from then on
        # the temp file may exist, so abort must look.
        self._started = False
        self._hash = hashlib.sha256()
        self._size = 0
        self._buffer = bytearray()

    async def write(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) >= BUFFER_SIZE:
            chunk, self._buffer = bytes(self._buffer), bytearray()
            self._started = True
            # Disk writes and hashing block; hashlib and file I/O release the GIL in a thread.
            await asyncio.to_thread(self._write_sync, chunk)

    def write_blocking(self, data: bytes) -> None:
        """``write`` for a caller already off the event loop (``BlockingWriter``)."""
        self._buffer += data
        if len(self._buffer) >= BUFFER_SIZE:
            chunk, self._buffer = bytes(self._buffer), bytearray()
            self._started = True
            self._write_sync(chunk)

    def _write_sync(self, chunk: bytes) -> None:
        if self._fd is None:
            # A bare descriptor, not open(): that adds an fstat, an isatty ioctl and an
            # lseek, and each system call on this thread passes the GIL to and from the
            # event loop's. Closed by finish or abort.
            self._fd = os.open(self._temp, _CREATE, 0o666)
        view = memoryview(chunk)
        while view:
            view = view[os.write(self._fd, view) :]
        self._hash.update(chunk)
        self._size += len(chunk)

    async def finish(self) -> tuple[int, str]:
        chunk, self._buffer = bytes(self._buffer), bytearray()
        self._started = True
        if self._inline and self._fd is None and len(chunk) <= INLINE_MAX:
            # In memory, a small file's create, write, fsync and rename take microseconds:
            # less than handing them to a thread, whose GIL hand-overs with this thread
            # cost about 0.4 ms of CPU per job (BENCHMARKS.md, issue 11).
            self._finish_sync(chunk)
        else:
            await asyncio.to_thread(self._finish_sync, chunk)
        return self._size, self._hash.hexdigest()

    def _finish_sync(self, chunk: bytes) -> None:
        self._write_sync(chunk)  # opens the temp file if nothing was written yet
        assert self._fd is not None
        os.fsync(self._fd)
        fd, self._fd = self._fd, None  # closed even if close reports an error
        os.close(fd)
        try:
            os.rename(self._temp, self._final)
        except FileNotFoundError:
            # The key's directory is new (the temp file exists: it was just written). Made
            # only then: a mkdir per file costs a failed mkdir and a stat when it exists.
            self._final.parent.mkdir(parents=True, exist_ok=True)
            os.rename(self._temp, self._final)
        _fsync_dir(self._final.parent)

    async def abort(self) -> None:
        if not self._started:
            return  # nothing was handed to a thread: no temp file exists
        await asyncio.to_thread(self._abort_sync)

    def _abort_sync(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
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
        self.in_memory = False  # set by ensure: the root is on tmpfs or ramfs

    def ensure(self) -> None:
        self._tmp.mkdir(parents=True, exist_ok=True)
        self.in_memory = filesystem_of(self.root) in IN_MEMORY

    def writer(self, key: str) -> LocalWriter:
        final = self.path(key)
        temp = self._tmp / f"{final.name}.{uuid.uuid4().hex}.part"
        return LocalWriter(final, temp, inline=self.in_memory)

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

    async def head(self, key: str) -> base.Head | None:
        try:
            st = await asyncio.to_thread(self.path(key).stat)
        except FileNotFoundError:
            return None
        modified = datetime.fromtimestamp(st.st_mtime, UTC)
        return base.Head(st.st_size, _etag(st), modified)

    async def source(self, key: str, *, size: int, etag: str) -> LocalSource:
        """The file as it is now (its own stat: size, mtime and the tag of both that
        aiohttp's sender, given ``path``, sends); the row's ``size`` and ``etag`` unused."""
        found = await self.head(key)
        if found is None:
            raise base.GoneError(f"no stored file {key}")
        return LocalSource(self.path(key), found.size, found.etag, found.last_modified)

    async def presigned_get(
        self, key: str, attachment: base.Attachment, seconds: int | None = None
    ) -> None:
        return None  # a directory has no URL of its own: the server sends the bytes

    async def delete(self, key: str) -> bool:
        path = self.path(key)
        try:
            await asyncio.to_thread(path.unlink)
        except FileNotFoundError:
            return False
        return True


@dataclass(frozen=True)
class LocalSource:
    """A stored file: ``path`` lets the server send it with sendfile; ``read`` is for a
    sender that cannot."""

    path: Path
    size: int
    etag: str
    last_modified: datetime

    async def read(self, start: int, end: int, chunk_size: int) -> AsyncGenerator[bytes, None]:
        try:
            handle = await asyncio.to_thread(self.path.open, "rb")
        except FileNotFoundError as exc:
            raise base.GoneError(f"no stored file {self.path.name}") from exc
        try:
            await asyncio.to_thread(handle.seek, start)
            left = end - start + 1
            while left > 0:
                chunk = await asyncio.to_thread(handle.read, min(chunk_size, left))
                if not chunk:
                    return
                left -= len(chunk)
                yield chunk
        finally:
            handle.close()


def _etag(st: os.stat_result) -> str:
    # aiohttp's tag for a file (web_fileresponse), strong: the one its FileResponse sends.
    return f'"{st.st_mtime_ns:x}-{st.st_size:x}"'


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


def filesystem_of(path: Path, mountinfo: str | None = None) -> str:
    """The type of the filesystem ``path`` (resolved) is on, from /proc/self/mountinfo
    (``mountinfo``: its text, for tests); "" when unknown (not Linux)."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return ""
    target = str(path)
    best, found = -1, ""
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields[6:]:
            continue
        # Field 5 is the mount point (spaces and the like as octal escapes); the type
        # follows the "-" that ends the optional fields.
        mount = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        fstype = fields[fields.index("-", 6) + 1]
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        # The longest mount point holds the path; of equal ones the last is on top.
        if inside and len(mount) >= best:
            best, found = len(mount), fstype
    return found
