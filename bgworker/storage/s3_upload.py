"""Writing one file to S3: a multipart upload streamed through one part-sized buffer.

The part being sent is read from the buffer in place, so memory stays bounded whatever the
file's size; size and sha256 are computed on the way; a file smaller than one part is a
single PutObject. Nothing is visible until CompleteMultipartUpload (the backend's rename).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any, Final, Protocol, cast

from bgworker.storage import base

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

log = logging.getLogger(__name__)

MAX_PARTS: Final = 10_000  # S3's limit per multipart upload


class Bucket(Protocol):
    """Where a writer uploads to (``s3.S3Storage``): named here so this module needs
    nothing from the storage that creates its writers."""

    @property
    def client(self) -> S3Client: ...

    bucket: str
    part_size: int


class _PartReader(io.RawIOBase):
    """A part's buffer as a file, read in place. A file object, not bytes: botocore hashes
    it and aiohttp sends it in small reads, where bytes the socket does not take at once
    would be copied whole into the transport's buffer; and in place, not a BytesIO copy:
    one part's bytes in memory, not two."""

    def __init__(self, data: memoryview) -> None:
        super().__init__()
        self._view = data
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), len(self._view) - self._pos)
        buffer[:n] = self._view[self._pos : self._pos + n]
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def __len__(self) -> int:
        return len(self._view)


class S3Writer:
    """One attempt's object. ``write`` and ``finish`` run on the loop; ``write_blocking``
    runs on a handler's thread and hands each full part to the loop, waiting for it.

    One buffer of exactly one part, allocated once and refilled: every part but the last
    has the same size (R2 requires it), and no part-sized block is freed and allocated
    again per part, which left the allocator holding about one more part (1 GiB measured:
    peak 104.8 MiB with a fresh buffer per part, the allocator's mmap threshold rising)."""

    def __init__(self, files: Bucket, object_key: str) -> None:
        self._files = files
        self._key = object_key
        self._loop = asyncio.get_running_loop()
        # Zeroed by the kernel page by page: a small file touches only what it fills.
        self._buffer = bytearray(files.part_size)
        self._fill = 0
        self._hash = hashlib.sha256()
        self._size = 0
        self._upload_id: str | None = None
        self._parts: list[CompletedPartTypeDef] = []

    def _copy_in(self, data: bytes) -> Iterator[None]:
        """Copy ``data`` into the buffer, pausing (yield) each time it is a full part."""
        view = memoryview(data)
        while view:
            n = min(len(view), len(self._buffer) - self._fill)
            self._buffer[self._fill : self._fill + n] = view[:n]
            self._fill += n
            view = view[n:]
            if self._fill == len(self._buffer):
                yield

    async def write(self, data: bytes) -> None:
        for _ in self._copy_in(data):
            await self._flush()

    def write_blocking(self, data: bytes) -> None:
        for _ in self._copy_in(data):
            asyncio.run_coroutine_threadsafe(self._flush(), self._loop).result()

    async def _take(self) -> IO[bytes]:
        """The filled part, hashed, as the body to send (read in place, never copied)."""
        part = memoryview(self._buffer)[: self._fill]
        # hashlib releases the GIL on large buffers: hash off the loop.
        await asyncio.to_thread(self._hash.update, part)
        self._size += self._fill
        # typeshed's IO is a class RawIOBase does not derive from; botocore wants read/seek.
        return cast(IO[bytes], _PartReader(part))

    async def _flush(self) -> None:
        body = await self._take()
        client, bucket = self._files.client, self._files.bucket
        if self._upload_id is None:
            started = await client.create_multipart_upload(Bucket=bucket, Key=self._key)
            self._upload_id = started["UploadId"]
        number = len(self._parts) + 1
        if number > MAX_PARTS:
            raise base.StorageError(
                f"the file outgrew {MAX_PARTS} parts of {self._files.part_size} bytes: "
                "raise BGWORKER_STORAGE__S3_PART_SIZE_BYTES"
            )
        sent = await client.upload_part(
            Bucket=bucket,
            Key=self._key,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=body,
        )
        self._parts.append({"PartNumber": number, "ETag": sent["ETag"]})
        self._fill = 0  # sent: the buffer takes the next part

    async def finish(self) -> tuple[int, str]:
        client, bucket = self._files.client, self._files.bucket
        if self._upload_id is None:
            # Smaller than a part: one PutObject, visible whole or not at all.
            await client.put_object(Bucket=bucket, Key=self._key, Body=await self._take())
        else:
            if self._fill:
                await self._flush()
            await client.complete_multipart_upload(
                Bucket=bucket,
                Key=self._key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
            )
        self._buffer = bytearray()  # the writer may outlive its use: free the part now
        return self._size, self._hash.hexdigest()

    async def abort(self) -> None:
        self._buffer = bytearray()
        if self._upload_id is None:
            return
        try:
            await self._files.client.abort_multipart_upload(
                Bucket=self._files.bucket, Key=self._key, UploadId=self._upload_id
            )
        except Exception:
            # Invisible anyway; `bgworker clean` aborts what is left.
            log.warning("could not abort upload %s of %s", self._upload_id, self._key)
