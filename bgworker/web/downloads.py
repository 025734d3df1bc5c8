"""``GET/HEAD /download/{token}`` and ``GET /status/{token}``, and ``link_state``: what a
link leads to (the token here, the request by ``links.state``), decided once for the JSON
answers here and the requester's HTML pages.

Every refusal is decided before any byte of the file is touched, and a refusal never tells
whether some other request exists: the token is checked first (its form, then its
signature), and only a token we signed can name a request id. Texts a requester sees
never carry exception text (``messages``).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter

from bgworker import storage, store
from bgworker.contract import requester_texts, states
from bgworker.links import state as link_states
from bgworker.links import tokens
from bgworker.observe import metrics, tracing
from bgworker.web import headers, identity, keys, offload, pages, responses

# RFC 9110 section 10.2.3: how long a client should wait before asking again for a file
# that is still being built.
RETRY_AFTER_SECONDS: Final = 30


_ZERO_SUFFIX: Final = re.compile(r"bytes=-0+", re.ASCII | re.IGNORECASE)


class _FileResponse(web.FileResponse):
    """aiohttp evaluates ``If-Range`` only as a date and ignores an entity tag, so a resumed
    download with a stale ETag would get a range of another representation. RFC 9110
    section 13.1.5: unless the entity tag matches strongly, ignore ``Range`` (send it all)."""

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        wanted = request.headers.get(hdrs.RANGE, "").strip()
        if wanted and (request.method != hdrs.METH_GET or not wanted.lower().startswith("bytes=")):
            # RFC 9110 section 14.2: Range is defined for GET only, and a range unit the
            # server does not know is ignored; aiohttp answered HEAD 206 and items= 416.
            request = request.clone(headers=_without(request, hdrs.RANGE))
        elif _ZERO_SUFFIX.fullmatch(wanted):
            # "bytes=-0" asks for no byte: unsatisfiable (section 14.1.3), and aiohttp would
            # send the whole file as a 206. A start past the end is its way to say 416.
            st = await asyncio.to_thread(self._path.stat)
            headers = request.headers.copy()
            headers[hdrs.RANGE] = f"bytes={st.st_size}-"
            request = request.clone(headers=headers)
        if "," in request.headers.get(hdrs.RANGE, ""):
            # aiohttp parses one range only and answers a multi-range request 416 even
            # when it is satisfiable. RFC 9110 section 14.2: a server MAY ignore Range;
            # the whole file (200) is a correct answer, a 416 is not.
            request = request.clone(headers=_without(request, hdrs.RANGE))
        if_range = request.headers.get(hdrs.IF_RANGE, "").strip()
        if if_range.startswith(('"', "W/")) and hdrs.RANGE in request.headers:
            st = await asyncio.to_thread(self._path.stat)
            # aiohttp's ETag for a file (web_fileresponse): mtime_ns and size, strong.
            if if_range != f'"{st.st_mtime_ns:x}-{st.st_size:x}"':
                request = request.clone(headers=_without(request, hdrs.RANGE))
        return await super().prepare(request)


def _without(request: web.BaseRequest, name: str) -> Any:
    headers = request.headers.copy()
    headers.popall(name, None)
    return headers


LinkState = link_states.LinkState
DOWNLOAD_STATUS: Final = link_states.DOWNLOAD_STATUS
STATUS_REFUSALS: Final = link_states.STATUS_REFUSALS


@dataclass(frozen=True)
class LinkView:
    state: LinkState
    message: str  # plain words for the requester, never exception text
    grant: tokens.Grant | None = None
    row: store.RequestRow | None = None  # None until a worker has recorded the request


async def link_state(request: web.Request, *, download: bool) -> LinkView:
    """Decide what the link in ``request`` (route ``{token}``) leads to. ``download``:
    a status-only link is refused (it opens the status page only)."""
    token = request.match_info["token"]
    # One URL per grant: the path as sent must be the token itself, not a percent-encoded
    # spelling of it that the router decoded.
    if request.rel_url.raw_path.rsplit("/", 1)[-1] != token:
        return LinkView(LinkState.INVALID, "this link is not valid")
    caller = await identity.caller(request.app[keys.IDENTITY], request)
    try:
        grant = request.app[keys.SIGNER].verify(token, caller)
    except tokens.SuspiciousTokenError as exc:
        return LinkView(LinkState.INVALID, str(exc))
    except tokens.SignatureExpiredError as exc:
        return LinkView(LinkState.LINK_EXPIRED, str(exc))
    except tokens.NotRequesterError as exc:
        return LinkView(LinkState.NOT_YOURS, str(exc))
    if download and grant.status_only:
        return LinkView(LinkState.STATUS_ONLY, "this link shows the status only", grant)
    found = await request.app[keys.STORE].links.get_request_for_link(grant.request_id)
    if found is None:
        if grant.generation != 0:
            return LinkView(LinkState.REVOKED, _REVOKED, grant)
        # A token we signed names a request a producer published: no worker has recorded
        # it yet, so it waits in the queue.
        return LinkView(LinkState.WAITING, "the file is not ready yet: waiting in the queue", grant)
    row, generation = found
    if grant.generation != generation:
        return LinkView(LinkState.REVOKED, _REVOKED, grant, row)
    state = link_states.of_row(row)
    if state == LinkState.READY:  # the row says ready: are the bytes still stored?
        assert row.storage_key is not None
        if not await request.app[keys.STORAGE].exists(row.storage_key):
            state = LinkState.GONE
    return LinkView(state, link_states.message(state, row), grant, row)


_REVOKED: Final = "this link was revoked; ask for a new one"


def _refuse(status: int, view: LinkView) -> web.Response:
    metrics.DOWNLOADS.labels(str(status)).inc()
    body = {"error": view.message, "status": status, "state": view.state}
    response = responses.json_response(body, status=status)
    if status == 409:
        response.headers[hdrs.RETRY_AFTER] = str(RETRY_AFTER_SECONDS)
    return response


async def download(request: web.Request) -> web.StreamResponse:
    if pages.wants_html(request):
        return await _page(request, download=True)
    view = await link_state(request, download=True)
    status = DOWNLOAD_STATUS[view.state]
    if view.state != LinkState.READY or view.row is None or view.row.storage_key is None:
        return _refuse(status, view)
    row = view.row
    assert row.storage_key is not None
    metrics.DOWNLOADS.labels("200").inc()
    if tracing.enabled():  # the download joins the trace of the job that built the file
        parent = await request.app[keys.STORE].traces.trace_carrier(row.id)
        with tracing.span("download", parent=parent, kind="server", request_id=str(row.id)):
            pass  # marks the grant; the bytes stream after the handler returns
    if (offloaded := offload.response(request, row)) is not None:
        return offloaded  # download_mode=accel: nginx sends the bytes
    files = request.app[keys.STORAGE]
    if not isinstance(files, storage.LocalStorage):
        # Imported here: a server on local storage never loads botocore.
        from bgworker.web import objects

        return await objects.send(request, files, row)
    # FileResponse streams from disk (sendfile where it can, chunks otherwise) and handles
    # Range/If-None-Match and date If-Range itself (RFC 9110); _FileResponse adds entity-tag
    # If-Range and multi-range, and we add the headers it cannot know.
    return _FileResponse(
        files.path(row.storage_key),
        chunk_size=request.app[keys.CHUNK_SIZE],
        headers={
            "Content-Type": row.content_type,
            "Content-Disposition": headers.content_disposition(row.filename),
            **headers.SECURITY_HEADERS,
        },
    )


async def status(request: web.Request) -> web.Response:
    if pages.wants_html(request):
        return await _page(request, download=False)
    view = await link_state(request, download=False)
    if view.state in STATUS_REFUSALS:
        return _refuse(DOWNLOAD_STATUS[view.state], view)
    assert view.grant is not None
    return responses.json_response(status_body(view))


def status_body(view: LinkView) -> dict[str, Any]:
    """The JSON status of a link that grants it (``state`` and ``message`` as above)."""
    row = view.row
    assert view.grant is not None
    if row is None:
        keys_ = ("file_type", "filename", "progress", "size", "sha256", "requested_at")
        return {
            "id": str(view.grant.request_id),
            "status": states.Status.QUEUED,
            "state": view.state,
            "message": view.message,
            "attempts": 0,
            "reused": False,
            **dict.fromkeys(keys_),
            "finished_at": None,
            "expires_at": None,
            "error": None,
        }
    return {
        "id": str(row.id),
        "status": row.status,
        "state": view.state,
        "message": view.message,
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
        # True when the file is that of an identical earlier request (dedupe), not rebuilt.
        "reused": row.reused_from is not None,
        "requested_at": row.requested_at.isoformat(),
        "finished_at": row.finished_at.isoformat() if row.finished_at else None,
        "expires_at": row.expires_at.isoformat() if row.expires_at else None,
        # The requester's words, never the exception (the row and `bgworker status` keep it).
        "error": requester_texts.failure(row.failure_reason)
        if row.status == states.Status.FAILED
        else None,
    }


async def _page(request: web.Request, *, download: bool) -> web.Response:
    """A browser's answer (content negotiation, ``pages.wants_html``): ``link_state``'s
    decision, as the requester's page, with the HTTP status the JSON answer has."""
    view = await link_state(request, download=download)
    if view.state == LinkState.STATUS_ONLY:  # a status link opened in a browser: its status
        view = await link_state(request, download=False)
    status = DOWNLOAD_STATUS[view.state]
    if not download and view.state not in STATUS_REFUSALS:
        status = 200
    kind = pages.KIND_OF[view.state]
    if view.state == LinkState.WAITING and view.row is None:
        kind = pages.Kind.WAITING
    # A refused link names nothing (pages._context): a revoked one found its row, but its
    # page may say no more than the JSON refusal, in the browser's language.
    row = None if view.state in STATUS_REFUSALS else view.row
    return pages.render(request, pages.State(kind, status, row))
