"""The requester's page: what a browser sees at a download or status link.

``downloads`` decides which case a link is in and calls ``render(request, state)`` when the
client prefers HTML (``wants_html``); API clients keep the JSON answers. The page carries
the same HTTP status as the JSON would, speaks the requester's language (``languages``) and,
while the file is being built, polls the JSON status endpoint once a second to move its
progress bar and reloads itself when the status changes. It never shows an exception text.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from aiohttp import hdrs, web

from bgworker import languages, store
from bgworker.contract import states
from bgworker.links import state as link_states
from bgworker.web import headers, keys

# A query parameter on the download URL that asks for the bytes even from a browser: the
# page's download button carries it (the page itself is the link's answer to a browser).
FILE_PARAM: Final = "download"
PAGE_TEMPLATE: Final = "pages/page.html.j2"
POLL_MILLISECONDS: Final = 1000


class Kind(StrEnum):
    WAITING = "waiting"  # no worker has recorded the request yet
    PARKED = "parked"  # its tenant's other requests hold every slot of its cap (fair share)
    IN_PROGRESS = "in_progress"  # queued, running or retrying
    READY = "ready"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"  # the file or the link is past its lifetime
    GONE = "gone"  # ready, but its bytes are no longer stored
    REVOKED = "revoked"
    NOT_YOURS = "not_yours"
    INVALID = "invalid"  # tampered or malformed token


@dataclass(frozen=True)
class State:
    kind: Kind
    status: int  # the HTTP status, the same as the JSON answer's
    row: store.RequestRow | None = None


# The page a browser gets for each state of a link (its HTTP status: links.state).
KIND_OF: Final[dict[link_states.LinkState, Kind]] = {
    link_states.LinkState.INVALID: Kind.INVALID,
    link_states.LinkState.NOT_YOURS: Kind.NOT_YOURS,
    link_states.LinkState.LINK_EXPIRED: Kind.EXPIRED,
    link_states.LinkState.REVOKED: Kind.REVOKED,
    link_states.LinkState.STATUS_ONLY: Kind.IN_PROGRESS,  # downloads shows the status view
    link_states.LinkState.WAITING: Kind.IN_PROGRESS,
    link_states.LinkState.RUNNING: Kind.IN_PROGRESS,
    link_states.LinkState.READY: Kind.READY,
    link_states.LinkState.FAILED: Kind.FAILED,
    link_states.LinkState.CANCELLED: Kind.CANCELLED,
    link_states.LinkState.EXPIRED: Kind.EXPIRED,
    link_states.LinkState.GONE: Kind.GONE,
}


def _quality(accept: str, wanted: str) -> float:
    """The q-value ``accept`` gives ``wanted`` (RFC 9110 section 12.5.1: the most specific
    matching range wins; no header at all accepts anything)."""
    kind = wanted.split("/")[0]
    best: tuple[int, float] = (-1, 0.0)
    for item in accept.split(","):
        media, *params = (p.strip() for p in item.split(";"))
        media = media.lower()
        specificity = {wanted: 2, f"{kind}/*": 1, "*/*": 0}.get(media)
        if specificity is None or specificity < best[0]:
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = min(1.0, max(0.0, float(value)))
                except ValueError:
                    q = 0.0
        if specificity > best[0]:
            best = (specificity, q)
    return best[1]


def wants_html(request: web.BaseRequest) -> bool:
    """A browser: ``text/html`` preferred over ``application/json``. ``*/*`` alone (curl,
    wget, most HTTP libraries) or no Accept header keeps the JSON and the file."""
    accept = request.headers.get(hdrs.ACCEPT, "")
    if not accept or FILE_PARAM in request.query:
        return False
    return _quality(accept, "text/html") > _quality(accept, "application/json")


def _requester(row: store.RequestRow | None) -> dict[str, Any]:
    requester = row.event.get("requester") if row is not None else None
    return requester if isinstance(requester, dict) else {}


def _context(request: web.Request, state: State, locale: str, nonce: str) -> dict[str, Any]:
    token = request.match_info["token"]
    row = state.row
    # Only a valid token's page names the file; a refusal says nothing about any request.
    ctx: dict[str, Any] = {
        "kind": state.kind.value,
        "language": locale.replace("_", "-"),
        "nonce": nonce,
        "poll_ms": POLL_MILLISECONDS,
        # Relative to /download/<token> and /status/<token> alike, so a path prefix added
        # by a proxy in front is kept.
        "status_url": f"../status/{token}",
        "download_url": f"../download/{token}?{FILE_PARAM}=1",
        "row": None,
    }
    if row is None:
        return ctx
    timezone = _requester(row).get("timezone")
    ctx["row"] = {
        "id": str(row.id),
        "filename": row.filename,
        "status": row.status.value,
        "description": str(row.event.get("description") or ""),
        "size": languages.format_size(row.size_bytes, locale)
        if row.size_bytes is not None
        else None,
        "progress": row.progress or 0.0,
        "percent": languages.format_percent(row.progress or 0.0, locale),
        "retrying": row.status == states.Status.RETRYING,
        "expires_at": (
            languages.format_datetime(row.expires_at, timezone, locale) if row.expires_at else None
        ),
        "requested_at": languages.format_datetime(row.requested_at, timezone, locale),
    }
    return ctx


def csp(nonce: str) -> str:
    # One inline script (the poller) allowed by its nonce; it may only fetch this origin.
    return (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src 'self'; form-action 'none'; frame-ancestors 'none'; "
        "base-uri 'none'"
    )


def render(request: web.Request, state: State) -> web.Response:
    """The page for ``state``, in the requester's language (or, with no request to ask, in
    the browser's ``Accept-Language``), with the security headers and no-store."""
    language = _requester(state.row).get("language")
    if language:
        locale = languages.locale_for(str(language))
    else:
        locale = languages.from_accept_language(request.headers.get(hdrs.ACCEPT_LANGUAGE))
    nonce = secrets.token_urlsafe(16)
    env = languages.environment(request.app[keys.TEMPLATE_DIR], locale)
    body = env.get_template(PAGE_TEMPLATE).render(_context(request, state, locale, nonce))
    return web.Response(
        text=body,
        status=state.status,
        content_type="text/html",
        charset="utf-8",
        headers={
            **headers.SECURITY_HEADERS,
            "Content-Language": locale.replace("_", "-"),
            "Vary": "Accept, Accept-Language",
            "X-Frame-Options": "DENY",
            "Content-Security-Policy": csp(nonce),
        },
    )
