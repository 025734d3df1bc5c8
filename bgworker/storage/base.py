"""What every storage backend is: the ``Storage``, ``Writer`` and ``Source`` protocols,
keys, errors.

The worker, finalize, the download server and ``clean`` use these and nothing backend
specific: the download server decides Range and conditional requests itself
(``web/ranges``) and reads the bytes through ``Storage.source``'s ``Source``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Final, Protocol

_KEY_RE: Final = re.compile(r"^[0-9a-f]{2}/[0-9a-f-]{36}\.[0-9a-f]{32}$")


class StorageError(Exception):
    pass


class StorageUnavailableError(StorageError):
    """The store did not answer (down, hung past its timeout, or failing with 5xx): the
    server answers 503, never a 500 or a refusal that says the file is gone."""


class GoneError(StorageError):
    """The file is not stored (deleted behind its row: ``clean``, an operator): the server
    answers 410, as the row would say."""


class RangeNotSatisfiableError(StorageError):
    """The store has fewer bytes than the row recorded, so the range asked for is not
    there: the server answers 416."""


@dataclass(frozen=True)
class Head:
    """What the store itself tells of a stored file: its size and its own validators (for
    S3, the ones it sends and evaluates conditional requests against on a presigned GET)."""

    size: int
    etag: str  # quoted, as in the ETag header
    last_modified: datetime


@dataclass(frozen=True)
class Attachment:
    """How the server sends a file, which a store that sends it instead must copy."""

    content_type: str
    disposition: str  # Content-Disposition
    cache_control: str


class Source(Protocol):
    """One stored file, opened to be sent: its size and validators, and its bytes."""

    @property
    def size(self) -> int: ...

    @property
    def etag(self) -> str:
        """A strong, quoted entity tag of these bytes."""

    @property
    def last_modified(self) -> datetime | None: ...

    @property
    def path(self) -> Path | None:
        """A file on this machine the server may hand to the kernel (sendfile), else None."""

    def read(self, start: int, end: int, chunk_size: int) -> AsyncGenerator[bytes, None]:
        """Bytes ``start`` to ``end`` (both included), in chunks of at most ``chunk_size``.
        Raises GoneError, RangeNotSatisfiableError or StorageUnavailableError at the first
        chunk, before any byte; closing the generator gives back what it holds."""


class FileWriter(Protocol):
    """What a handler writes to. Bytes only; the file is never held whole in memory."""

    async def write(self, data: bytes) -> None: ...


class SyncFileWriter(Protocol):
    """What a synchronous handler writes to, from its own thread: ``write`` blocks."""

    def write(self, data: bytes) -> None: ...


class Writer(Protocol):
    """One attempt's file on its way in: invisible until ``finish``, gone after ``abort``."""

    async def write(self, data: bytes) -> None: ...

    def write_blocking(self, data: bytes) -> None:
        """``write`` for a caller on another thread than the loop (``BlockingWriter``)."""

    async def finish(self) -> tuple[int, str]:
        """Make the file visible, whole; return its size and sha256 (hex)."""

    async def abort(self) -> None: ...


@dataclass
class Stale:
    """What ``clean`` may look at: stored keys and unfinished writes older than a time."""

    keys: list[str] = field(default_factory=list)
    # Backend-specific names of unfinished writes (a temp file, a multipart upload).
    parts: list[str] = field(default_factory=list)


class Storage(Protocol):
    @property
    def backend(self) -> str:
        """ "local" or "s3", as settings.storage.backend names it."""

    def writer(self, key: str) -> Writer: ...

    async def exists(self, key: str) -> bool: ...

    async def size(self, key: str) -> int:
        """The stored file's size, 0 when there is none."""

    async def delete(self, key: str) -> bool:
        """Remove the file; False when there was none."""

    async def stale(self, older_than: float) -> Stale:
        """Keys and unfinished writes last changed before ``older_than`` (epoch seconds)."""

    async def remove_part(self, part: str) -> int:
        """Remove an unfinished write named by ``stale``; the bytes it freed, when known."""

    async def head(self, key: str) -> Head | None:
        """The stored file's size and the store's own validators; None when there is none."""

    async def source(self, key: str, *, size: int, etag: str) -> Source:
        """The file, to be sent. ``size`` and ``etag`` are what its row recorded (the etag:
        its sha256, quoted): a backend that would have to ask a remote store for them uses
        these (S3: no HEAD before the GET); one that reads them from a local stat uses its
        own. Raises GoneError when the file is not stored."""

    async def presigned_get(
        self, key: str, attachment: Attachment, seconds: int | None = None
    ) -> str | None:
        """A URL the client GETs the file from directly, for ``seconds`` at most, with the
        name, type and caching the server would send; None for a backend without one."""


def is_key(text: str) -> bool:
    # fullmatch: `$` alone lets a trailing newline in.
    return bool(_KEY_RE.fullmatch(text))


def check_key(key: str) -> str:
    # Keys come from our own rows, but check anyway: nothing outside our keys is touched.
    if not is_key(key):
        raise StorageError(f"not a storage key: {key!r}")
    return key


def key_for(request_id: uuid.UUID, lease_token: uuid.UUID) -> str:
    """Derived from ids we made, never from user input. The lease token makes each attempt's
    file distinct, so a worker that lost its lease can never overwrite the file served."""
    rid = str(request_id)
    return f"{rid[:2]}/{rid}.{lease_token.hex}"
