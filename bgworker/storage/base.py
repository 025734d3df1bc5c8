"""What every storage backend is: the ``Storage`` and ``Writer`` protocols, keys, errors.

The worker, finalize, the download server and ``clean`` use these and nothing backend
specific, except the download server's S3 modes (``web/objects.py``).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Final, Protocol

_KEY_RE: Final = re.compile(r"^[0-9a-f]{2}/[0-9a-f-]{36}\.[0-9a-f]{32}$")


class StorageError(Exception):
    pass


class StorageUnavailableError(StorageError):
    """The store did not answer (down, hung past its timeout, or failing with 5xx): the
    server answers 503, never a 500 or a refusal that says the file is gone."""


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
