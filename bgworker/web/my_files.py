"""The requester's "my files" page: ``/my-files/{token}`` lists the live files of the address
the link was sent to, with download, resend and cancel; ``POST /my-files`` emails that link.

The token (``tokens.Signer.my_files``) names an email address and an expiry, signed with the
download links' keys under a salt of its own: a download link is never a my-files link and
the reverse. Every query below names that address (``store.my_files``), so a page can only
read or change requests made with it: another's request id gets the same answer as an
unknown one ("not one of your files").

The page's forms (resend, cancel) carry the token in the body, never a cookie: a site that
does not hold the link cannot post on its behalf, and a browser's cross-site post is refused
by its ``Origin`` (or ``Sec-Fetch-Site``) before the body is read. Bundles and schedules
plug in as further ``SECTIONS`` and ``ACTIONS`` (``my_files_sections``).
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from urllib.parse import urlsplit

from aiohttp import hdrs, web

from bgworker import languages, store
from bgworker.contract import states
from bgworker.links import state as link_states
from bgworker.links import tokens
from bgworker.web import headers, keys, my_files_sections, pages, responses

ROUTE: Final = "/my-files"
PAGE_TEMPLATE: Final = "pages/my_files.html.j2"
# The most files one page lists (newest first); the page says when there are more.
LIMIT: Final = 100
# An email address as RFC 5321 bounds it; anything else is refused before any query.
MAX_EMAIL_CHARS: Final = 320
FORM: Final = "application/x-www-form-urlencoded"
# The body of a form post from the page: a token, an id and little else.
MAX_FORM_BYTES: Final = 4096


@dataclass(frozen=True)
class Section:
    """A part of the page after the files. ``load(db, email, locale)`` returns what it lists,
    only the address's own; ``template`` (under ``templates/pages/``) renders
    ``section.items`` and may post to an action of ``ACTIONS`` with the page's ``token``.
    ``links(signer, base, item)``, if given, adds an item's signed links: ``base`` is
    ``..`` for the page (relative: a path prefix in front is kept) or the public URL."""

    name: str
    template: str
    load: Callable[[store.Store, str, str], Awaitable[list[dict[str, Any]]]]
    links: Callable[[tokens.Signer, str, dict[str, Any]], None] | None = None


SECTIONS: Final[list[Section]] = [
    Section(
        "bundles",
        my_files_sections.BUNDLES_TEMPLATE,
        my_files_sections.bundles,
        my_files_sections.bundle_links,
    ),
    Section("schedules", my_files_sections.SCHEDULES_TEMPLATE, my_files_sections.schedules),
]

# What a form post did, as the note the page shows after it, and its HTTP status.
NOTES: Final[dict[str, int]] = {
    "resent": 202,
    "too-soon": 429,
    "nothing-to-resend": 409,
    "cancelled": 200,
    "cancelling": 202,
    "not-cancellable": 409,
    "not-yours": 404,
    "schedule-ended": 200,
    "schedule-already-ended": 409,
}

Action = Callable[[web.Request, str, uuid.UUID], Awaitable[str]]


def mount(app: web.Application) -> None:
    app.router.add_get(ROUTE, ask_form)
    app.router.add_post(ROUTE, ask)
    app.router.add_get(ROUTE + "/{token}", page)
    app.router.add_post(ROUTE + "/{action}", act)


# -- the link, by email -------------------------------------------------------------------


def valid_email(value: object) -> str | None:
    """``value`` when it looks like one address (no spaces or controls, one ``@`` with
    something on each side), else None. Whether it has files is never said."""
    if not isinstance(value, str) or not 3 <= len(value.strip()) <= MAX_EMAIL_CHARS:
        return None
    value = value.strip()
    local, at, domain = value.rpartition("@")
    if not at or not local or not domain or any(c.isspace() or ord(c) < 0x20 for c in value):
        return None
    return value


async def ask_form(request: web.Request) -> web.Response:
    """A form asking for the address (a browser without a link yet)."""
    return _render(request, "ask", 200)


async def ask(request: web.Request) -> web.Response:
    """``POST /my-files`` (``email`` as a form field or in JSON): 202 whether or not the
    address has requests, and whether or not the rate limit held the email back."""
    refused = cross_site(request)
    if refused is not None:
        return refused
    if request.content_type == "application/json":
        try:
            body = await request.json()
        except ValueError:
            body = None
        value = body.get("email") if isinstance(body, dict) else None
    elif request.content_type == FORM:
        value = (await request.post()).get("email")
    else:
        return _error(415, "send the address as a form field or JSON: email")
    email = valid_email(value)
    if email is None:
        return _error(400, "an email address is required")
    interval = request.app[keys.WEB_SETTINGS].my_files_mail_interval_seconds
    await request.app[keys.STORE].my_files.ask_link(tokens.normal_email(email), interval=interval)
    if pages.wants_html(request):
        return _render(request, "asked", 202)
    message = "if this address asked for files, a link to them is on its way"
    return responses.json_response({"status": 202, "message": message}, status=202)


# -- the page -----------------------------------------------------------------------------


def _verify(request: web.Request, token: str) -> tokens.Requester | link_states.LinkState:
    try:
        return request.app[keys.SIGNER].verify_my_files(token)
    except tokens.SignatureExpiredError:
        return link_states.LinkState.LINK_EXPIRED
    except tokens.TokenError:
        return link_states.LinkState.INVALID


async def page(request: web.Request) -> web.Response:
    token = request.match_info["token"]
    # One URL per grant, as for downloads: the path as sent is the token itself.
    if request.rel_url.raw_path.rsplit("/", 1)[-1] != token:
        return _refuse(request, link_states.LinkState.INVALID)
    requester = _verify(request, token)
    if not isinstance(requester, tokens.Requester):
        return _refuse(request, requester)
    db = request.app[keys.STORE]
    config = request.app[keys.WEB_SETTINGS]
    found, generations = await db.my_files.list_files(
        requester.email, recent_seconds=config.my_files_recent_seconds, limit=LIMIT + 1
    )
    newest = found[0].event.get("requester") if found else None
    language = newest.get("language") if isinstance(newest, dict) else None
    locale = pages.page_locale(request, language)
    signer = request.app[keys.SIGNER]
    files = [
        _item(row, generation, signer, locale)
        for row, generation in zip(found[:LIMIT], generations, strict=False)
    ]
    html = pages.wants_html(request)
    public = request.app[keys.PUBLIC_URL]
    sections = []
    for section in SECTIONS:
        items = await section.load(db, requester.email, locale)
        if section.links is not None:
            for entry in items:
                section.links(signer, ".." if html else public, entry)
        sections.append({"name": section.name, "template": section.template, "items": items})
    for item in files:
        token_ = item.pop("download_token")
        if token_ is None:
            item["download_url"] = None
        elif html:  # relative to /my-files/<token>: a path prefix in front is kept
            item["download_url"] = f"../download/{token_}?{pages.FILE_PARAM}=1"
        else:
            item["download_url"] = tokens.download_url(public, token_)
    if not html:
        body = {"email": requester.email, "files": files, "more": len(found) > LIMIT}
        body["sections"] = {s["name"]: s["items"] for s in sections}
        return responses.json_response(body)
    note = request.query.get("note")
    return _render(
        request,
        "list",
        200,
        locale=locale,
        token=token,
        email=requester.email,
        files=files,
        more=len(found) > LIMIT,
        sections=sections,
        note=note if note in NOTES else None,
        polling=any(f["state"] in ("waiting", "running") for f in files),
    )


def _item(
    row: store.RequestRow, generation: int, signer: tokens.Signer, locale: str
) -> dict[str, Any]:
    state = link_states.of_row(row)
    item = pages.row_view(row, locale)
    running = row.status == states.Status.RUNNING
    item.update(
        state=state.value,
        parked=row.status == states.Status.PARKED,
        cancel_requested=row.cancel_requested,
        cancellable=state in (link_states.LinkState.WAITING, link_states.LinkState.RUNNING)
        and not (running and row.cancel_requested),
        resendable=state in (link_states.LinkState.READY, link_states.LinkState.FAILED),
        download_token=None,
    )
    if state == link_states.LinkState.READY:
        # A fresh link under the row's current generation, as a resent email would carry
        # (bound to the requester in the link mode that binds).
        item["download_token"] = signer.issue(
            row.id, requester_id=row.requester_id, generation=generation
        )
    return item


def _refuse(request: web.Request, state: link_states.LinkState) -> web.Response:
    status = link_states.DOWNLOAD_STATUS[state]
    kind = "expired" if state == link_states.LinkState.LINK_EXPIRED else "invalid"
    if pages.wants_html(request):
        return _render(request, kind, status)
    message = "this link has expired" if kind == "expired" else "this link is not valid"
    body = {"error": message, "status": status, "state": state.value}
    return responses.json_response(body, status=status)


def _render(
    request: web.Request, kind: str, status: int, *, locale: str | None = None, **ctx: Any
) -> web.Response:
    locale = locale or pages.page_locale(request, None)
    nonce = secrets.token_urlsafe(16)
    env = languages.environment(request.app[keys.TEMPLATE_DIR], locale)
    context = {
        "kind": kind,
        "language": locale.replace("_", "-"),
        "nonce": nonce,
        "poll_ms": pages.POLL_MILLISECONDS,
        "polling": False,
        "note": None,
        "interval_minutes": max(
            1, round(request.app[keys.WEB_SETTINGS].my_files_mail_interval_seconds / 60)
        ),
        **ctx,
    }
    body = env.get_template(PAGE_TEMPLATE).render(context)
    return pages.html_response(
        body, status=status, locale=locale, nonce=nonce, form_action="'self'"
    )


def _error(status: int, message: str) -> web.Response:
    return responses.json_response({"error": message, "status": status}, status=status)


# -- the page's forms ---------------------------------------------------------------------


def cross_site(request: web.Request) -> web.Response | None:
    """403 for a browser's post from another site. An ``Origin`` naming a site must be this
    server's public URL or the host it was called by. The page's own forms send ``Origin:
    null`` (its ``Referrer-Policy: no-referrer`` makes the browser hide it, Fetch standard),
    so without a named origin ``Sec-Fetch-Site`` decides: same-origin only, and a ``null``
    origin without it is refused. A client that sends neither header (curl, a service) is no
    browser another site could drive."""
    origin = request.headers.get(hdrs.ORIGIN)
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if origin is not None and origin != "null":
        public = urlsplit(request.app[keys.PUBLIC_URL])
        allowed = {f"{public.scheme}://{public.netloc}", f"{request.scheme}://{request.host}"}
        if origin in allowed and fetch_site in (None, "same-origin"):
            return None
    elif fetch_site == "same-origin" or (fetch_site is None and origin is None):
        return None
    return _error(403, "a form of this page must be posted from this page")


async def act(request: web.Request) -> web.Response:
    """``POST /my-files/{action}`` with ``token`` and ``id`` in a form body: the action on
    one of the token's files (or schedules); a browser is sent back to the page with a
    note (303)."""
    action = ACTIONS.get(request.match_info["action"])
    if action is None:
        raise web.HTTPNotFound()
    refused = cross_site(request)
    if refused is not None:
        return refused
    if request.content_type != FORM:
        return _error(415, f"the body must be {FORM}")
    if request.content_length is None or request.content_length > MAX_FORM_BYTES:
        return _error(413, f"the body must be at most {MAX_FORM_BYTES} bytes")
    form = await request.post()
    token = form.get("token")
    requester = _verify(request, token) if isinstance(token, str) else None
    if not isinstance(requester, tokens.Requester):
        return _refuse(request, requester or link_states.LinkState.INVALID)
    try:
        request_id = uuid.UUID(str(form.get("id")))
    except ValueError:
        note = "not-yours"
    else:
        note = await action(request, requester.email, request_id)
    assert isinstance(token, str)
    if pages.wants_html(request):
        # Relative to /my-files/<action>: back to /my-files/<token>, under any path prefix.
        raise web.HTTPSeeOther(f"{token}?note={note}", headers=dict(headers.SECURITY_HEADERS))
    body = {"id": str(form.get("id")), "note": note, "status": NOTES[note]}
    return responses.json_response(body, status=NOTES[note])


async def resend(request: web.Request, email: str, request_id: uuid.UUID) -> str:
    """Send the file's email (ready, or failed) again through the outbox, at most once per
    ``my_files_mail_interval_seconds``."""
    db = request.app[keys.STORE]
    owned = await db.my_files.owned(request_id, email)
    if owned is None:
        return "not-yours"
    interval = request.app[keys.WEB_SETTINGS].my_files_mail_interval_seconds
    if await db.links.resend_email(request_id, email=email, interval=interval) is not None:
        return "resent"
    recently = datetime.now(UTC) - timedelta(seconds=interval)
    if owned.mailed_at is not None and owned.mailed_at > recently:
        return "too-soon"
    return "nothing-to-resend"


async def cancel(request: web.Request, email: str, request_id: uuid.UUID) -> str:
    """As ``bgworker cancel``: a waiting request ends now, a running one at its worker's
    next lease renewal."""
    db = request.app[keys.STORE]
    if await db.my_files.owned(request_id, email) is None:
        return "not-yours"
    status = await db.requests.request_cancel(request_id, email=email)
    if status is None:
        return "not-cancellable"
    return "cancelled" if status == states.Status.CANCELLED else "cancelling"


ACTIONS: Final[dict[str, Action]] = {
    "resend": resend,
    "cancel": cancel,
    "end-schedule": my_files_sections.end_schedule,
}
