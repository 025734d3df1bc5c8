"""A schedule's one-click unsubscribe (RFC 8058): ``/schedules/unsubscribe?token=...``.

Every email of a scheduled request carries ``List-Unsubscribe: <this URL>`` and
``List-Unsubscribe-Post: List-Unsubscribe=One-Click``. A mail client's one-click POST (body
``List-Unsubscribe=One-Click``) ends the schedule at once, no cookie, no confirmation, as
RFC 8058 asks. A GET (a person who opened the link, or a mail scanner fetching every URL)
never ends anything: it shows what the schedule is and a button that POSTs. The token names
one schedule and is signed (its own salt: no download token is accepted); a tampered or
foreign token is refused with 400 on both methods.
"""

from __future__ import annotations

import uuid

from aiohttp import hdrs, web

from bgworker import languages
from bgworker.links import tokens
from bgworker.store import schedules
from bgworker.web import headers, keys

TEMPLATE = "pages/unsubscribe.html.j2"
# A page with no script and a form that posts to itself only.
CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


def _schedule_id(request: web.Request) -> uuid.UUID | None:
    token = request.query.get("token", "")
    try:
        return request.app[keys.SIGNER].verify_unsubscribe(token)
    except tokens.TokenError:
        return None


def _page(
    request: web.Request, kind: str, status: int, schedule: schedules.Schedule | None = None
) -> web.Response:
    requester = (schedule.template.get("requester") if schedule else None) or {}
    language = requester.get("language") if isinstance(requester, dict) else None
    if language:
        locale = languages.locale_for(str(language))
    else:
        locale = languages.from_accept_language(request.headers.get(hdrs.ACCEPT_LANGUAGE))
    context: dict[str, object] = {"kind": kind, "language": locale.replace("_", "-")}
    if schedule is not None:
        context.update(
            token=request.query["token"],
            file_type=schedule.file_type,
            description=str(schedule.template.get("description") or ""),
            cron=schedule.cron,
            timezone=schedule.timezone,
            next_run=(
                languages.format_datetime(schedule.next_run_at, schedule.timezone, locale)
                if schedule.next_run_at
                else None
            ),
        )
    env = languages.environment(request.app[keys.TEMPLATE_DIR], locale)
    return web.Response(
        text=env.get_template(TEMPLATE).render(context),
        status=status,
        content_type="text/html",
        charset="utf-8",
        headers={
            **headers.SECURITY_HEADERS,
            "Content-Language": locale.replace("_", "-"),
            "X-Frame-Options": "DENY",
            "Content-Security-Policy": CSP,
        },
    )


async def confirm(request: web.Request) -> web.Response:
    """GET: what the schedule is, and a button to stop it; changes nothing."""
    schedule_id = _schedule_id(request)
    if schedule_id is None:
        return _page(request, "invalid", 400)
    schedule = await request.app[keys.STORE].schedules.get(schedule_id)
    if schedule is None or schedule.status == "ended":
        return _page(request, "ended", 200, schedule)
    return _page(request, "confirm", 200, schedule)


async def end(request: web.Request) -> web.Response:
    """POST (one click, or the confirm page's button): the schedule ends. Ending an ended
    schedule answers the same, so a client that retries sees success."""
    schedule_id = _schedule_id(request)
    if schedule_id is None:
        return _page(request, "invalid", 400)
    db = request.app[keys.STORE]
    await db.schedules.end(schedule_id, "unsubscribed")
    return _page(request, "ended", 200, await db.schedules.get(schedule_id))


def mount(app: web.Application) -> None:
    app.router.add_get("/schedules/unsubscribe", confirm)
    app.router.add_post("/schedules/unsubscribe", end)
