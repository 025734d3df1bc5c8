"""Where file bytes live: a ``Storage`` with two backends, chosen by settings.storage.

``local``: a directory, written temp + fsync + rename (``local``). ``s3``: S3-compatible
object storage, written as multipart uploads that CompleteMultipartUpload makes visible
(``s3``). Either way a file is visible only complete, its size and sha256 are computed
while it streams, and its key comes from ``key_for``, never from user input.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from bgworker import settings as settings_mod
from bgworker.storage.base import (
    Attachment,
    FileWriter,
    GoneError,
    Head,
    RangeNotSatisfiableError,
    Source,
    Stale,
    Storage,
    StorageError,
    StorageUnavailableError,
    SyncFileWriter,
    Writer,
    is_key,
    key_for,
)
from bgworker.storage.local import BUFFER_SIZE, LocalStorage, LocalWriter
from bgworker.storage.writers import BlockingWriter, MemoryWriter, SyncMemoryWriter

__all__ = [
    "BUFFER_SIZE",
    "Attachment",
    "BlockingWriter",
    "FileWriter",
    "GoneError",
    "Head",
    "LocalStorage",
    "LocalWriter",
    "MemoryWriter",
    "RangeNotSatisfiableError",
    "Source",
    "Stale",
    "Storage",
    "StorageError",
    "StorageUnavailableError",
    "SyncFileWriter",
    "SyncMemoryWriter",
    "Writer",
    "is_key",
    "key_for",
    "opened",
]


@asynccontextmanager
async def opened(settings: settings_mod.Settings) -> AsyncIterator[Storage]:
    """The storage the settings name, ready to use, closed on exit."""
    if settings.storage.backend == "local":
        files = LocalStorage(settings.storage_dir)
        files.ensure()
        yield files
        return
    # Imported here: a local deployment never loads botocore (tens of MiB).
    from bgworker.storage import s3

    remote = s3.S3Storage(settings.storage)
    await remote.open()
    try:
        yield remote
    finally:
        await remote.close()
