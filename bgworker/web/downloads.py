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

from bgworker import metrics, states, tokens, tracing
from bgworker.web import headers, identity, keys, pages, responses

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
    if pages.wants_html(request):
        return await _page(request)
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
    if tracing.enabled():  # the download joins the trace of the job that built the file
        parent = await request.app[keys.STORE].trace_carrier(row.id)
        with tracing.span("download", parent=parent, kind="server", request_id=str(row.id)):
            pass  # marks the grant; the bytes stream after the handler returns
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
    if pages.wants_html(request):
        return await _page(request)
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
        "progress": row.progress,
        "attempts": row.attempts,
        "size": row.size_bytes,
        "sha256": row.sha256,
        "requested_at": row.requested_at.isoformat(),
        "finished_at": row.finished_at.isoformat() if row.finished_at else None,
        "expires_at": row.expires_at.isoformat() if row.expires_at else None,
        "error": row.last_error if row.status == states.Status.FAILED else None,
    }
    return responses.json_response(body)


async def _page(request: web.Request) -> web.Response:
    """A browser's answer (content negotiation, ``pages.wants_html``): the same decisions as
    the JSON answers, as the requester's page."""
    caller = await identity.caller(request.app[keys.IDENTITY], request)
    try:
        grant = request.app[keys.SIGNER].verify(request.match_info["token"], caller)
    except tokens.SuspiciousTokenError:
        return pages.render(request, pages.State(pages.Kind.INVALID, 400))
    except tokens.SignatureExpiredError:
        return pages.render(request, pages.State(pages.Kind.EXPIRED, 410))
    except tokens.NotRequesterError:
        return pages.render(request, pages.State(pages.Kind.NOT_YOURS, 403))
    row = await request.app[keys.STORE].get_request(grant.request_id)
    return pages.render(request, pages.state_of(row))
