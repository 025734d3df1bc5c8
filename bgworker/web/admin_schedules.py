"""The console's schedules: the list (by status) with pause, resume and end, the same
actions as ``bgworker schedules pause|resume|end``. Every action is a POST with the
session's CSRF token (checked by the console's middleware) and redirects back with a note.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Final

from aiohttp import web

from bgworker import store
from bgworker.web import admin_requests, keys

STATUSES: Final = ("active", "paused", "ended")
ACTIONS: Final = ("pause", "resume", "end")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/schedules", schedules_page)
    app.router.add_post("/schedules/{id}/{action}", schedule_action)


def _db(request: web.Request) -> store.Store:
    return request.config_dict[keys.STORE]


async def schedules_page(request: web.Request) -> web.Response:
    status = request.query.get("status") or None
    if status is not None and status not in STATUSES:
        raise web.HTTPBadRequest(text=f"unknown status: {status!r}")
    rows = await _db(request).schedules.list(status, 200)
    context: dict[str, Any] = {
        "rows": rows,
        "status": status or "",
        "statuses": STATUSES,
        "note": request.query.get("note", ""),
    }
    return admin_requests.render("schedules.html.j2", request, context)


async def schedule_action(request: web.Request) -> web.StreamResponse:
    try:
        schedule_id = uuid.UUID(request.match_info["id"])
    except ValueError:
        raise web.HTTPNotFound(text="not a schedule id") from None
    action = request.match_info["action"]
    db = _db(request).schedules
    if action == "pause":
        done = await db.pause(schedule_id)
    elif action == "resume":
        done = await db.resume(schedule_id, datetime.now(UTC))
    elif action == "end":
        done = await db.end(schedule_id, "operator")
    else:
        raise web.HTTPNotFound(text=f"unknown action {action!r}")
    note = f"{action}-done" if done else f"{action}-refused"
    raise web.HTTPSeeOther(f"/admin/schedules?note={note}")
