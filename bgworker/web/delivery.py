"""Sending a granted download's bytes, whatever backend holds them, after ``downloads``
has checked the token and the row.

``ranges.decide`` answers Range and the conditional headers once, for every backend, and
the storage's ``Source`` gives the bytes: a local file goes out through aiohttp's
``FileResponse`` (sendfile) told only what was decided, an object in S3 through one GET of
just the bytes decided, its body closed when the client hangs up. In redirect mode (a
backend with ``presigned_get``) a GET is a 302 to a presigned URL that lives
``storage.presign_seconds`` and carries the name, type and ``private, no-store`` the
server would send, and a HEAD is answered here (a URL presigned for GET does not answer
HEAD) with the validators of the store that answers the GET. With ``download_mode=accel``
nginx sends the bytes and answers Range itself (``offload``): that path never gets here.
"""

from __future__ import annotations

import contextlib
import math
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter

from bgworker import storage, store
from bgworker.web import headers, keys, ranges, responses


async def send(request: web.Request, row: store.RequestRow) -> web.StreamResponse:
    """The answer to a granted GET or HEAD of ``row``'s file."""
    assert row.storage_key is not None
    files = request.app[keys.STORAGE]
    disposition = headers.content_disposition(row.filename)
    common = {
        hdrs.CONTENT_TYPE: row.content_type,
        hdrs.CONTENT_DISPOSITION: disposition,
        **headers.SECURITY_HEADERS,
    }
    if request.app[keys.DOWNLOAD_MODE] == "redirect":
        if request.method == hdrs.METH_HEAD:
            return await _head_of_redirect(request, files, row.storage_key, common)
        cache_control = headers.SECURITY_HEADERS[hdrs.CACHE_CONTROL]
        attachment = storage.Attachment(row.content_type, disposition, cache_control)
        url = await files.presigned_get(row.storage_key, attachment, _until_expiry(row))
        if url is not None:
            # no-store: a cached redirect would outlive the presigned URL it points to.
            return web.Response(
                status=302, headers={hdrs.LOCATION: url, **headers.SECURITY_HEADERS}
            )
    try:
        # The row's size and sha256: what a remote backend serves under without a HEAD.
        size, etag = row.size_bytes or 0, f'"{row.sha256}"'
        source = await files.source(row.storage_key, size=size, etag=etag)
    except storage.GoneError:
        return _gone()
    decision = ranges.decide(
        request.method,
        range_=request.headers.get(hdrs.RANGE),
        if_range=request.headers.get(hdrs.IF_RANGE),
        if_none_match=request.headers.get(hdrs.IF_NONE_MATCH),
        etag=source.etag,
        size=source.size,
    )
    validators: dict[str, str] = {hdrs.ETAG: source.etag}
    if source.last_modified is not None:
        validators[hdrs.LAST_MODIFIED] = format_datetime(source.last_modified, usegmt=True)
    match decision:
        case ranges.NotModified():
            return web.Response(status=304, headers={**validators, **headers.SECURITY_HEADERS})
        case ranges.Unsatisfiable():
            return _unsatisfiable(decision.size)
    if source.path is not None:
        return _file_response(request, source.path, decision, common, request.app[keys.CHUNK_SIZE])
    return await _stream(request, source, decision, {**common, **validators})


def _file_response(
    request: web.Request,
    path: Path,
    decision: ranges.Whole | ranges.Part,
    common: dict[str, str],
    chunk_size: int,
) -> web.StreamResponse:
    """aiohttp's FileResponse as the byte sender (sendfile where it can, chunks otherwise),
    told only what ``decide`` decided: the request it sees carries the one range to send,
    or none, and no If-None-Match or If-Range left to evaluate."""
    told = request.headers.copy()
    for name in (hdrs.RANGE, hdrs.IF_RANGE, hdrs.IF_NONE_MATCH):
        told.popall(name, None)
    if hdrs.IF_NONE_MATCH in request.headers:
        # Section 13.1.3: If-Modified-Since is ignored when If-None-Match is sent.
        told.popall(hdrs.IF_MODIFIED_SINCE, None)
    if isinstance(decision, ranges.Part):
        told[hdrs.RANGE] = f"bytes={decision.start}-{decision.end}"
    return _SentFile(path, request.clone(headers=told), chunk_size=chunk_size, headers=common)


class _SentFile(web.FileResponse):
    """A FileResponse that answers the request ``told``: aiohttp prepares the response a
    handler returns with the request as it came."""

    def __init__(
        self, path: Path, told: web.BaseRequest, *, chunk_size: int, headers: dict[str, str]
    ) -> None:
        super().__init__(path, chunk_size=chunk_size, headers=headers)
        self._told = told

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        return await super().prepare(self._told)


async def _stream(
    request: web.Request,
    source: storage.Source,
    decision: ranges.Whole | ranges.Part,
    sent: dict[str, str],
) -> web.StreamResponse:
    response = web.StreamResponse(status=decision.status, headers=sent)
    response.headers[hdrs.ACCEPT_RANGES] = "bytes"
    if isinstance(decision, ranges.Part):
        start, end = decision.start, decision.end
        response.headers[hdrs.CONTENT_RANGE] = decision.content_range
    else:
        start, end = 0, source.size - 1
    response.content_length = end - start + 1
    if request.method == hdrs.METH_HEAD or source.size == 0:
        await response.prepare(request)
        await response.write_eof()
        return response
    chunks = source.read(start, end, request.app[keys.CHUNK_SIZE])
    async with contextlib.aclosing(chunks):
        try:
            # The first chunk before any header: a missing object is still a 410 then.
            first = await anext(chunks, b"")
        except storage.GoneError:
            return _gone()
        except storage.RangeNotSatisfiableError:
            return _unsatisfiable(source.size)
        await response.prepare(request)
        await response.write(first)
        async for chunk in chunks:
            await response.write(chunk)
        await response.write_eof()
    return response


async def _head_of_redirect(
    request: web.Request, files: storage.Storage, key: str, common: dict[str, str]
) -> web.StreamResponse:
    """In redirect mode the GET that follows is answered by the object store, with its own
    ETag and Last-Modified: HEAD gives those, so a client that resumes with ``If-Range``
    (or asks ``If-None-Match``) from a HEAD sends a validator the store knows, not our
    sha256 that it would never match (RFC 9110 section 13.1.5: a whole new body instead
    of the rest)."""
    found = await files.head(key)
    if found is None:
        return _gone()
    response = web.StreamResponse(
        headers={
            **common,
            hdrs.ETAG: found.etag,
            hdrs.LAST_MODIFIED: format_datetime(found.last_modified, usegmt=True),
            hdrs.ACCEPT_RANGES: "bytes",
        }
    )
    response.content_length = found.size
    await response.prepare(request)
    await response.write_eof()
    return response


def _unsatisfiable(size: int) -> web.Response:
    content_range = ranges.Unsatisfiable(size).content_range
    return web.Response(
        status=416, headers={hdrs.CONTENT_RANGE: content_range, **headers.SECURITY_HEADERS}
    )


def _gone() -> web.Response:
    # Deleted between the row check and now (clean, an operator): gone, as the row says.
    body = {"error": "the file is no longer stored", "status": 410, "state": "gone"}
    return responses.json_response(body, status=410)


def _until_expiry(row: store.RequestRow) -> int | None:
    """Seconds the file has left: a presigned URL must not outlive the file's expiry
    (the link's own limit), which may come sooner than ``presign_seconds``."""
    if row.expires_at is None:
        return None
    left = (row.expires_at - datetime.now(UTC)).total_seconds()
    return max(1, math.ceil(left))
