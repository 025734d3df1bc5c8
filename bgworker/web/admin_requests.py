"""The console's requests: search (id, requester, file type, status) with paging, and one
request's page (row, attempts, effects, progress, dead-letter history) with cancel and
replay. Also ``render``, the page helper every console page uses.

Replay goes through the dead-letter actions (``/admin/dead-letters/action``, the rules of
``bgworker dlq replay``), so it is offered only when the request has a letter in the
dead-letter queue. Without one there is nothing to replay from: the page says so (a
waiting request whose message went missing is republished by the workers' recovery sweep).
"""

from __future__ import annotations

import uuid
from typing import Any, Final

import aiohttp_jinja2
from aiohttp import web

from bgworker import store
from bgworker.contract import states
from bgworker.links import lifecycle
from bgworker.ops.deadletters import letters, queue, reading
from bgworker.store import listing
from bgworker.web import admin_auth, keys

PAGE_SIZE: Final = 50
MAX_OFFSET: Final = 100_000  # deeper than anyone pages; keeps OFFSET scans bounded


def user_of(request: web.Request) -> str | None:
    caller = request.get(admin_auth.CALLER)
    return None if caller is None else caller.user


def render(
    name: str, request: web.Request, context: dict[str, Any], status: int = 200
) -> web.Response:
    """A template with what every page needs (no aiohttp_jinja2 context processors: they
    keep state under string request keys, which aiohttp 3.14 warns about)."""
    caller = request.get(admin_auth.CALLER)
    base = {
        "user": user_of(request),
        "csrf": (caller.csrf if caller is not None else None) or "",
        "path": request.path,
    }
    return aiohttp_jinja2.render_template(name, request, base | context, status=status)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/requests/search", search_page)
    app.router.add_get("/requests/{id}", request_page)
    app.router.add_post("/requests/{id}/cancel", cancel)
    # Issue 9: the same three as `bgworker link`, `revoke` and `resend`.
    app.router.add_post("/requests/{id}/link", issue_link)
    app.router.add_post("/requests/{id}/revoke", revoke_links)
    app.router.add_post("/requests/{id}/resend", resend_email)
    app.router.add_get("/api/requests/search", search_json)
    app.router.add_get("/api/requests/{id}", request_json)


def _db(request: web.Request) -> store.Store:
    return request.config_dict[keys.STORE]


def _text(query: Any, name: str) -> str | None:
    value = query.get(name)
    return value.strip() if isinstance(value, str) and value.strip() else None


def _search_of(query: Any) -> tuple[listing.Search, int]:
    """Filters and page number from a query string; malformed values are a 400."""
    raw_id, raw_status, raw_page = _text(query, "id"), _text(query, "status"), _text(query, "page")
    try:
        request_id = uuid.UUID(raw_id) if raw_id else None
    except ValueError:
        raise web.HTTPBadRequest(text=f"not a request id: {raw_id!r}") from None
    if raw_status is not None and raw_status not in set(states.Status):
        raise web.HTTPBadRequest(text=f"unknown status: {raw_status!r}")
    ascii_number = raw_page is not None and raw_page.isascii() and raw_page.isdigit()
    if raw_page is not None and not (ascii_number and 1 <= int(raw_page) <= 10**6):
        raise web.HTTPBadRequest(text=f"not a page number: {raw_page!r}")
    page = int(raw_page) if raw_page else 1
    wanted = listing.Search(
        id=request_id,
        requester=_text(query, "requester"),
        file_type=_text(query, "file_type"),
        status=states.Status(raw_status) if raw_status else None,
    )
    return wanted, page


async def _search(request: web.Request) -> dict[str, Any]:
    wanted, page = _search_of(request.query)
    offset = min((page - 1) * PAGE_SIZE, MAX_OFFSET)
    rows, more = await _db(request).listing.search(wanted, limit=PAGE_SIZE, offset=offset)
    filters = {n: _text(request.query, n) or "" for n in ("id", "requester", "file_type")}
    filters["status"] = wanted.status.value if wanted.status else ""
    return {"rows": rows, "page": page, "more": more, "filters": filters}


async def search_page(request: web.Request) -> web.Response:
    context = await _search(request) | {"statuses": list(states.Status)}
    return render("search.html.j2", request, context)


async def search_json(request: web.Request) -> web.Response:
    return _json(await _search(request))


def _request_id(request: web.Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info["id"])
    except ValueError:
        raise web.HTTPNotFound(text="not a request id") from None


async def _details(request: web.Request) -> dict[str, Any]:
    request_id = _request_id(request)
    db = _db(request)
    row = await db.requests.get_request(request_id)
    if row is None:
        raise web.HTTPNotFound(
            text=f"{request_id}: not recorded yet: no worker has taken it; it may be "
            "waiting in the queue"
        )
    shown = row.to_json()
    shown.pop("lease_token", None)
    letter, dlq_error = None, None
    url, namespace, queue_type = request.app[keys.ADMIN_AMQP]
    try:
        async with queue.DeadLetterQueue(url, namespace, queue_type) as q:
            letter = await reading.show(q, str(request_id))
    except queue.DlqError as exc:
        dlq_error = str(exc)  # the page still shows what PostgreSQL knows
    return {
        "row": shown,
        "attempts": await db.requests.list_attempts(request_id),
        "effects": await db.listing.effects(request_id),
        "dlq_history": await db.dead_letters.list_actions(request_id),
        "has_letter": letter is not None,
        "dlq_error": dlq_error,
        "cancellable": row.status in (states.Status.QUEUED, states.Status.RETRYING)
        or (row.status == states.Status.RUNNING and not row.cancel_requested),
    }


async def request_page(request: web.Request) -> web.Response:
    context = await _details(request) | {"note": _text(request.query, "note") or ""}
    return render("request.html.j2", request, context)


async def request_json(request: web.Request) -> web.Response:
    return _json(await _details(request))


async def cancel(request: web.Request) -> web.StreamResponse:
    """As ``bgworker cancel``: a queued or retrying request ends at once, a running one at
    its next lease renewal; anything else is not cancellable."""
    request_id = _request_id(request)
    status = await _db(request).requests.request_cancel(request_id)
    if status is None:
        note = "not-cancellable"
    elif status == states.Status.RUNNING:
        note = "cancelling"
    else:
        note = "cancelled"
    raise web.HTTPSeeOther(f"/admin/requests/{request_id}?note={note}")


async def issue_link(request: web.Request) -> web.Response:
    """A fresh link, shown on the page itself: a redirect would put the token in a URL (and
    so in the access log and the browser history)."""
    request_id = _request_id(request)
    link = await lifecycle.issue(
        _db(request),
        request.config_dict[keys.SIGNER],
        request.config_dict[keys.PUBLIC_URL],
        request_id,
        status_only=(await request.post()).get("kind") == "status",
    )
    context = await _details(request)
    note = "" if link is not None else "no-link"
    return render("request.html.j2", request, context | {"note": note, "issued": link})


async def revoke_links(request: web.Request) -> web.StreamResponse:
    """As ``bgworker revoke``: every link issued so far stops working; the file stays."""
    request_id = _request_id(request)
    generation = await lifecycle.revoke(_db(request), request_id)
    note = "revoked" if generation is not None else "not-revocable"
    raise web.HTTPSeeOther(f"/admin/requests/{request_id}?note={note}")


async def resend_email(request: web.Request) -> web.StreamResponse:
    """As ``bgworker resend``: the email again, through the outbox, with a fresh link."""
    request_id = _request_id(request)
    kind = await lifecycle.resend(_db(request), request_id)
    note = "resent" if kind is not None else "not-resendable"
    raise web.HTTPSeeOther(f"/admin/requests/{request_id}?note={note}")


def _json(data: Any) -> web.Response:
    # Strict JSON whatever a row holds (see deadletters.letters.dumps).
    return web.json_response(data, dumps=letters.dumps)
