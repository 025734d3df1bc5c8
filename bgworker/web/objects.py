"""Downloads from object storage, after ``downloads`` has checked the token and the row.

redirect (the default for s3): a 302 to a presigned GET that lives
``storage.presign_seconds``, carrying ``response-content-disposition``,
``response-content-type`` and ``response-cache-control`` so the name, type and
``private, no-store`` the server would send survive; the bytes never pass through Python.
stream: the server GETs the object and streams it, passing ``Range`` through to S3 (206 with
Content-Range, 416), with the sha256 as strong ETag. A HEAD is answered here in both modes
(a URL presigned for GET does not answer HEAD), with the validators of whoever answers the
GET: the sha256 in stream mode, the object store's ETag and Last-Modified in redirect mode.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Final

from aiohttp import hdrs, web
from botocore.exceptions import ClientError

from bgworker import storage, store
from bgworker.storage import s3
from bgworker.web import headers, keys, responses

# One range, as a client sends it (RFC 9110 section 14.1.1). Anything else (several
# ranges, other units) is ignored and the whole file sent: a server MAY ignore Range.
_ONE_RANGE: Final = re.compile(r"bytes=(\d{1,19}-\d{0,19}|-\d{1,19})", re.ASCII)


async def send(
    request: web.Request, files: storage.Storage, row: store.RequestRow
) -> web.StreamResponse:
    assert isinstance(files, s3.S3Storage) and row.storage_key is not None
    disposition = headers.content_disposition(row.filename)
    etag = f'"{row.sha256}"'
    common = {
        hdrs.CONTENT_TYPE: row.content_type,
        hdrs.CONTENT_DISPOSITION: disposition,
        hdrs.ETAG: etag,
        hdrs.ACCEPT_RANGES: "bytes",
        **headers.SECURITY_HEADERS,
    }
    redirect = request.app[keys.DOWNLOAD_MODE] == "redirect"
    if request.method == hdrs.METH_HEAD:
        return await _head(request, files, row, common, redirect=redirect)
    if redirect:
        url = await files.presigned_get(
            row.storage_key,
            content_type=row.content_type,
            disposition=disposition,
            cache_control=headers.SECURITY_HEADERS[hdrs.CACHE_CONTROL],
            seconds=_until_expiry(row),
        )
        # no-store: a cached redirect would outlive the presigned URL it points to.
        return web.Response(status=302, headers={hdrs.LOCATION: url, **headers.SECURITY_HEADERS})
    # "*" matches any current representation (RFC 9110 section 13.1.2), as on local files.
    if _tags(request.headers.get(hdrs.IF_NONE_MATCH, "")) & {etag, "*"}:
        return web.Response(status=304, headers={hdrs.ETAG: etag, **headers.SECURITY_HEADERS})
    return await _stream(request, files, row.storage_key, common)


async def _head(
    request: web.Request,
    files: s3.S3Storage,
    row: store.RequestRow,
    common: dict[str, str],
    *,
    redirect: bool,
) -> web.StreamResponse:
    """A HEAD, answered here (a URL presigned for GET does not answer HEAD). In redirect
    mode the GET that follows is answered by the object store, with its own ETag and
    Last-Modified: HEAD gives those, so a client that resumes with ``If-Range`` (or asks
    ``If-None-Match``) from a HEAD sends a validator the store knows, not our sha256 that
    it would never match (RFC 9110 section 13.1.5: a whole new body instead of the rest)."""
    size = row.size_bytes or 0
    if redirect:
        assert row.storage_key is not None
        found = await files.head(row.storage_key)
        if found is None:
            return _gone()
        common = {**common, hdrs.ETAG: found.etag}
        common[hdrs.LAST_MODIFIED] = format_datetime(found.last_modified, usegmt=True)
        size = found.size
    response = web.StreamResponse(headers=common)
    response.content_length = size
    await response.prepare(request)
    await response.write_eof()
    return response


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


def _tags(value: str) -> set[str]:
    return {tag.strip() for tag in value.split(",")}


def passed_range(wanted: str, if_range: str | None, etag: str) -> str | None:
    """The ``Range`` header to pass on to S3, or None to send the whole file. Only one
    well-formed byte range goes out: the client's header never reaches S3 otherwise."""
    wanted = wanted.strip()
    if not _ONE_RANGE.fullmatch(wanted):
        return None
    # RFC 9110 section 13.1.5: unless the entity tag matches strongly, send it all (a date
    # cannot match: the ETag is the one validator we give).
    if if_range is not None and if_range.strip() != etag:
        return None
    return wanted


async def _stream(
    request: web.Request, files: s3.S3Storage, key: str, common: dict[str, str]
) -> web.StreamResponse:
    try:
        wanted = passed_range(
            request.headers.get(hdrs.RANGE, ""),
            request.headers.get(hdrs.IF_RANGE),
            common[hdrs.ETAG],
        )
        got = await files.get(key, wanted)
    except s3.RangeNotSatisfiableError:
        size = await files.size(key)
        return web.Response(
            status=416,
            headers={hdrs.CONTENT_RANGE: f"bytes */{size}", **headers.SECURITY_HEADERS},
        )
    except ClientError:
        # Missing (a store that fails raises StorageUnavailableError: 503, web/__init__).
        return _gone()
    response = web.StreamResponse(status=got.status, headers=common)
    response.content_length = got.length
    if got.content_range:
        response.headers[hdrs.CONTENT_RANGE] = got.content_range
    try:
        await response.prepare(request)
        async for chunk in got.chunks(request.app[keys.CHUNK_SIZE]):
            await response.write(chunk)
        await response.write_eof()
    finally:
        # A client that hangs up makes a write raise: the body must go back now, not when
        # the garbage collector gets to it, or each one holds one of botocore's 10 pooled
        # connections and downloads wait on the pool.
        got.body.close()
    return response
