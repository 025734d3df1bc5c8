"""The S3 backend: any S3-compatible object store, through aiobotocore.

A file is a multipart upload streamed in parts of ``s3_part_size_bytes`` through one
part-sized buffer (the part being sent is read from it in place), so memory stays bounded
whatever the file's size; size and sha256 are computed on the way. Nothing is visible until
CompleteMultipartUpload (the backend's rename); a file smaller than one part is a single
PutObject, just as atomic. An
attempt that fails aborts its upload; one that dies (kill -9) leaves an upload no reader
can see, which ``clean`` aborts once it is older than its grace period.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC
from typing import TYPE_CHECKING, Any, Final

from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session
from botocore.exceptions import BotoCoreError, ClientError

from bgworker import settings as settings_mod
from bgworker.storage import base, s3_upload

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

# Separates key and upload id in the name ``stale`` gives an unfinished upload.
_PART_SEP: Final = "\n"
_MISSING: Final = frozenset({"404", "NoSuchKey", "NotFound"})


@dataclass(frozen=True)
class ObjectStream:
    """An open GET: its headers, and the body to iterate (closed by ``chunks``)."""

    status: int  # 200, or 206 for a range
    length: int
    content_range: str | None
    body: Any  # aiobotocore's StreamingBody

    async def chunks(self, size: int) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.body.iter_chunks(size):
                yield chunk
        finally:
            self.body.close()


@dataclass(frozen=True)
class S3Source:
    """A stored object, to be sent: the size and ETag its row recorded (no HEAD first), and
    its bytes by a GET of just the range wanted."""

    files: S3Storage
    key: str
    size: int
    etag: str
    last_modified: None = None
    path: None = None  # no file here: the bytes pass through Python

    async def read(self, start: int, end: int, chunk_size: int) -> AsyncGenerator[bytes, None]:
        whole = start == 0 and end == self.size - 1
        got = await self.files.get(self.key, None if whole else f"bytes={start}-{end}")
        try:
            async for chunk in got.body.iter_chunks(chunk_size):
                yield chunk
        finally:
            # A client that hangs up makes the sender close this generator: the body goes
            # back now, not when the garbage collector gets to it, or each one holds one of
            # botocore's 10 pooled connections and downloads wait on the pool.
            got.body.close()


class S3Storage:
    backend: Final = "s3"

    def __init__(self, config: settings_mod.StorageSettings) -> None:
        assert config.s3_bucket is not None  # settings refuse s3 without a bucket
        self.bucket = config.s3_bucket
        self.prefix = config.s3_prefix
        if self.prefix and not self.prefix.endswith("/"):
            self.prefix += "/"
        self.part_size = config.s3_part_size_bytes
        self.presign_seconds = config.presign_seconds
        self._config = config
        self._stack = AsyncExitStack()
        self._client: S3Client | None = None

    async def open(self) -> None:
        c = self._config
        secret = c.s3_secret_access_key
        self._client = await self._stack.enter_async_context(
            _session().create_client(
                "s3",
                region_name=c.s3_region,
                endpoint_url=c.s3_endpoint_url,
                aws_access_key_id=c.s3_access_key_id,
                aws_secret_access_key=secret.get_secret_value() if secret else None,
                config=AioConfig(
                    # SigV4 everywhere: botocore would presign with SigV2 for an endpoint
                    # URL, which AWS refuses in newer regions and servers sign-check wrong.
                    signature_version="s3v4",
                    # Path style works on every S3-compatible server (no wildcard DNS).
                    s3={"addressing_style": "path" if c.s3_endpoint_url else "auto"},
                    # botocore 1.36+ adds CRC checksums that several S3-compatible servers
                    # refuse; our own sha256 covers the bytes.
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                    retries={"mode": "standard", "max_attempts": 5},
                    # botocore waits 60 s to connect and 60 s per read, each of 5 attempts:
                    # a hung store would hold a download, a /status or a job for minutes.
                    connect_timeout=c.s3_timeout_seconds,
                    read_timeout=c.s3_timeout_seconds,
                ),
            )
        )

        try:
            await self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            # Wrong endpoint, credentials or bucket: one line at start, not a failed job.
            await self.close()
            where = self._config.s3_endpoint_url or f"AWS {self._config.s3_region}"
            line = f"S3 bucket {self.bucket!r} at {where}: {_refusal(exc)}"
            if isinstance(exc, ClientError) and _status(exc) < 500:
                # The store answered and refused: a setting to fix (64), not an outage (69).
                raise base.StorageError(line) from exc
            raise base.StorageUnavailableError(line) from exc

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None

    @property
    def client(self) -> S3Client:
        if self._client is None:
            raise base.StorageError("S3 storage used before open()")
        return self._client

    def object_key(self, key: str) -> str:
        return self.prefix + base.check_key(key)

    def writer(self, key: str) -> s3_upload.S3Writer:
        return s3_upload.S3Writer(self, self.object_key(key))

    async def head(self, key: str) -> base.Head | None:
        """The stored object's size and the store's own validators (its ETag is an MD5, or
        for a multipart upload an MD5 of MD5s with the part count), or None."""
        try:
            head = await self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            raise _unavailable(exc) from exc
        except BotoCoreError as exc:  # connection refused, timed out...
            raise _unavailable(exc) from exc
        # botocore's datetime is in dateutil's UTC zone; the stdlib's, for email.utils.
        modified = head["LastModified"].astimezone(UTC)
        return base.Head(head["ContentLength"], head["ETag"], modified)

    async def exists(self, key: str) -> bool:
        return await self.head(key) is not None

    async def source(self, key: str, *, size: int, etag: str) -> S3Source:
        return S3Source(self, key, size, etag)

    async def size(self, key: str) -> int:
        found = await self.head(key)
        return found.size if found is not None else 0

    async def delete(self, key: str) -> bool:
        # DeleteObject answers 204 whether or not there was an object: ask first.
        if await self.head(key) is None:
            return False
        await self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key))
        return True

    async def stale(self, older_than: float) -> base.Stale:
        found = base.Stale()
        pages = self.client.get_paginator("list_objects_v2")
        async for page in pages.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for item in page.get("Contents", []):
                key = item["Key"].removeprefix(self.prefix)
                if base.is_key(key) and item["LastModified"].timestamp() < older_than:
                    found.keys.append(key)
        uploads = self.client.get_paginator("list_multipart_uploads")
        async for listing in uploads.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for upload in listing.get("Uploads", []):
                # Ours only, as for objects: with the default prefix "" the listing is the
                # whole bucket, and remove_part refuses anything else.
                ours = base.is_key(upload["Key"].removeprefix(self.prefix))
                if ours and upload["Initiated"].timestamp() < older_than:
                    found.parts.append(upload["Key"] + _PART_SEP + upload["UploadId"])
        return found

    async def remove_part(self, part: str) -> int:
        key, _, upload_id = part.partition(_PART_SEP)
        if not base.is_key(key.removeprefix(self.prefix)) or not key.startswith(self.prefix):
            raise base.StorageError(f"not one of our uploads: {part!r}")
        try:
            await self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id
            )
        except ClientError as exc:
            if _code(exc) != "NoSuchUpload":  # completed or aborted meanwhile
                raise
        return 0  # its parts' size is not worth a ListParts per upload

    async def presigned_get(
        self, key: str, attachment: base.Attachment, seconds: int | None = None
    ) -> str:
        """A URL that GETs the file for ``seconds`` (at most ``presign_seconds``), with the
        name, type and caching the server would send (S3's response-* overrides, covered by
        the signature)."""
        return await self.client.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self.bucket,
                "Key": self.object_key(key),
                "ResponseContentType": attachment.content_type,
                "ResponseContentDisposition": attachment.disposition,
                "ResponseCacheControl": attachment.cache_control,
            },
            ExpiresIn=min(seconds or self.presign_seconds, self.presign_seconds),
        )

    async def get(self, key: str, byte_range: str | None = None) -> ObjectStream:
        """GET the file, or the range ``bytes=first-last``. Raises RangeNotSatisfiableError,
        GoneError when the object is missing, StorageUnavailableError when the store does
        not answer."""
        object_key = self.object_key(key)
        try:
            if byte_range:
                got = await self.client.get_object(
                    Bucket=self.bucket, Key=object_key, Range=byte_range
                )
            else:
                got = await self.client.get_object(Bucket=self.bucket, Key=object_key)
        except ClientError as exc:
            if _code(exc) in {"InvalidRange", "416"}:
                raise base.RangeNotSatisfiableError(str(exc)) from exc
            if _code(exc) in _MISSING:
                raise base.GoneError(f"no stored object {object_key}") from exc
            raise _unavailable(exc) from exc
        except BotoCoreError as exc:
            raise _unavailable(exc) from exc
        status = got["ResponseMetadata"]["HTTPStatusCode"]
        return ObjectStream(status, got["ContentLength"], got.get("ContentRange"), got["Body"])


_SESSIONS: list[AioSession] = []


def _session() -> AioSession:
    """One botocore session per process: its loader keeps the S3 model it parsed, so the
    start-up probe's client and the worker's own share it (about 4 MiB RSS each)."""
    if not _SESSIONS:
        _SESSIONS.append(get_session())
    return _SESSIONS[0]


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _refusal(exc: Exception) -> str:
    """HeadBucket's answer in words: it has no body, so botocore's code is the status."""
    if not isinstance(exc, ClientError):
        return str(exc)
    status = _status(exc)
    if status == 404:
        return "404, no such bucket (create it, or fix BGWORKER_STORAGE__S3_BUCKET)"
    if status in {401, 403}:
        return (
            f"{status}, access denied (check BGWORKER_STORAGE__S3_ACCESS_KEY_ID and "
            "BGWORKER_STORAGE__S3_SECRET_ACCESS_KEY, and the key's rights on the bucket)"
        )
    return _code(exc) or str(status)


def _unavailable(exc: Exception) -> base.StorageUnavailableError:
    return base.StorageUnavailableError(f"S3: {exc}")


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
