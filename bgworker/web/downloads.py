"""``GET/HEAD /download/{token}`` and ``GET /status/{token}``.

Every refusal is decided before any byte of the file is touched, and a refusal never tells
whether some other request exists: the token is checked first, and only a token we signed
can name a request id.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Final

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter

from bgworker import metrics, states, tokens
from bgworker.web import headers, identity, keys, responses

# RFC 9110 section 10.2.3: how long a client should wait before asking again for a file
# that is still being built.
RETRY_AFTER_SECONDS: Final = 30


class _FileResponse(web.FileResponse):
    """aiohttp evaluates ``If-Range`` only as a date and ignores an entity tag, so a resumed
    download with a stale ETag would get a range of another representation. RFC 9110
    section 13.1.5: unless the entity tag matches strongly, ignore ``Range`` (send it all)."""

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if_range = request.headers.get(hdrs.IF_RANGE, "").strip()
        if if_range.startswith(('"', "W/")) and hdrs.RANGE in request.headers:
            st = await asyncio.to_thread(self._path.stat)
            # aiohttp's ETag for a file (web_fileresponse): mtime_ns and size, strong.
            if if_range != f'"{st.st_mtime_ns:x}-{st.st_size:x}"':
                without_range = request.headers.copy()
                del without_range[hdrs.RANGE]
                request = request.clone(headers=without_range)
        return await super().prepare(request)


def _refuse(status: int, message: str) -> web.Response:
    metrics.DOWNLOADS.labels(str(status)).inc()
    return responses.json_response({"error": message, "status": status}, status=status)


async def _grant(request: web.Request) -> tokens.Grant | web.Response:
    caller = await identity.caller(request.app[keys.IDENTITY], request)
    try:
        return request.app[keys.SIGNER].verify(request.match_info["token"], caller)
    except tokens.SuspiciousTokenError as exc:
        return _refuse(400, str(exc))
    except tokens.SignatureExpiredError as exc:
        return _refuse(410, str(exc))
    except tokens.NotRequesterError as exc:
        return _refuse(403, str(exc))


async def download(request: web.Request) -> web.StreamResponse:
    grant = await _grant(request)
    if isinstance(grant, web.Response):
        return grant
    row = await request.app[keys.STORE].get_request(grant.request_id)
    if row is None:
        return _refuse(404, "no such file")
    if row.status in states.IN_PROGRESS:
        response = _refuse(409, f"the file is not ready yet (status: {row.status})")
        response.headers[hdrs.RETRY_AFTER] = str(RETRY_AFTER_SECONDS)
        return response
    if row.status != states.Status.READY or row.storage_key is None:
        return _refuse(410, f"the file is not available (status: {row.status})")
    if row.expires_at is not None and row.expires_at <= datetime.now(UTC):
        return _refuse(410, "the file has expired")
    path = request.app[keys.STORAGE].path(row.storage_key)
    if not await asyncio.to_thread(path.is_file):
        return _refuse(410, "the file is no longer stored")
    metrics.DOWNLOADS.labels("200").inc()
    # FileResponse streams from disk (sendfile where it can, chunks otherwise) and handles
    # Range/If-None-Match and date If-Range itself (RFC 9110); _FileResponse adds entity-tag
    # If-Range, and we add the headers it cannot know.
    return _FileResponse(
        path,
        chunk_size=request.app[keys.CHUNK_SIZE],
        headers={
            "Content-Type": row.content_type,
            "Content-Disposition": headers.content_disposition(row.filename),
            **headers.SECURITY_HEADERS,
        },
    )


async def status(request: web.Request) -> web.Response:
    grant = await _grant(request)
    if isinstance(grant, web.Response):
        return grant
    row = await request.app[keys.STORE].get_request(grant.request_id)
    if row is None:
        return _refuse(404, "no such request")
    body = {
        "id": str(row.id),
        "status": row.status,
        "file_type": row.file_type,
        "filename": row.filename,
        # The fraction, and the counts the handler reported (null when it reported none).
        "progress": row.progress,
        "percent": row.percent,
        "progress_done": row.progress_done,
        "progress_total": row.progress_total,
        "attempts": row.attempts,
        "size": row.size_bytes,
        "sha256": row.sha256,
        "requested_at": row.requested_at.isoformat(),
        "finished_at": row.finished_at.isoformat() if row.finished_at else None,
        "expires_at": row.expires_at.isoformat() if row.expires_at else None,
        "error": row.last_error if row.status == states.Status.FAILED else None,
    }
    return responses.json_response(body)
