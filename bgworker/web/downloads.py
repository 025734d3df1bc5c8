"""``GET/HEAD /download/{token}`` and ``GET /status/{token}``, and ``link_state``: what a
link leads to (the token here, the request by ``links.state``), decided once for the JSON
answers here and the requester's HTML pages.

Every refusal is decided before any byte of the file is touched, and a refusal never tells
whether some other request exists: the token is checked first (its form, then its
signature), and only a token we signed can name a request id. Texts a requester sees
never carry exception text (``messages``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from aiohttp import hdrs, web

from bgworker import store
from bgworker.contract import requester_texts, states
from bgworker.links import state as link_states
from bgworker.links import tokens
from bgworker.observe import metrics, tracing
from bgworker.web import delivery, identity, keys, offload, pages, responses

# RFC 9110 section 10.2.3: how long a client should wait before asking again for a file
# that is still being built.
RETRY_AFTER_SECONDS: Final = 30


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
    return await delivery.send(request, row)  # Range and conditionals: ranges.decide


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
    elif view.row is not None and view.row.status == states.Status.PARKED:
        kind = pages.Kind.PARKED
    # A refused link names nothing (pages._context): a revoked one found its row, but its
    # page may say no more than the JSON refusal, in the browser's language.
    row = None if view.state in STATUS_REFUSALS else view.row
    return pages.render(request, pages.State(kind, status, row))
