"""The my-files page's bundles and schedules (``web.my_files.SECTIONS`` and ``ACTIONS``).

Each loader gets the token's address and asks ``store.my_files`` for that address's own
bundles or schedules only; ending a schedule first finds it the address's
(``schedule_status``), so another's id answers as an unknown one ("not-yours") and nothing
changes. A schedule ends as its email's unsubscribe link ends it: ``Schedules.end`` with the
reason ``unsubscribed``.
"""

from __future__ import annotations

import uuid
from typing import Any, Final

from aiohttp import web

from bgworker import languages, store
from bgworker.contract import bundles as bundle_contract
from bgworker.links import tokens
from bgworker.web import keys

# The most bundles and schedules a page lists, each (newest first).
LIMIT: Final = 50
BUNDLES_TEMPLATE: Final = "pages/my_files_bundles.html.j2"
SCHEDULES_TEMPLATE: Final = "pages/my_files_schedules.html.j2"
# The reason an ended schedule records: the same as its email's unsubscribe link.
ENDED_REASON: Final = "unsubscribed"


async def bundles(db: store.Store, email: str, locale: str) -> list[dict[str, Any]]:
    """The address's live bundles: each one's ZIP name, description, parts done of all,
    and (``bundle_links``) its page's link."""
    items = []
    for live in await db.my_files.list_bundles(email, limit=LIMIT):
        bundle = live.bundle
        requester = bundle.event.get("requester") or {}
        timezone = requester.get("timezone") if isinstance(requester, dict) else None
        items.append(
            {
                "id": str(bundle.id),
                "filename": bundle_contract.zip_name(bundle.event),
                "description": str(bundle.event.get("description") or ""),
                "parts": bundle.parts,
                "done": live.done,
                "ready": live.ready,
                "cancelled": bundle.cancel_requested,
                "requested_at": languages.format_datetime(bundle.created_at, timezone, locale),
                # Signs the link (bundle_links), then removed: not shown nor sent.
                "requester_id": bundle.requester_id,
            }
        )
    return items


def bundle_links(signer: tokens.Signer, base: str, item: dict[str, Any]) -> None:
    """The bundle page's link, signed as the bundle's email signs it (its own salt, bound to
    the requester when links are bound); ``base`` is the page's ``..`` or the public URL."""
    bundle_id = uuid.UUID(item["id"])
    token = signer.for_bundles().issue(bundle_id, requester_id=item.pop("requester_id"))
    item["bundle_url"] = tokens.bundle_url(base, token)


async def schedules(db: store.Store, email: str, locale: str) -> list[dict[str, Any]]:
    """The address's active and paused schedules: cron and timezone, the next run in that
    timezone (none while paused: resuming picks a new one), the description."""
    items = []
    for schedule in await db.my_files.list_schedules(email, limit=LIMIT):
        active = schedule.status == "active" and schedule.next_run_at is not None
        next_run = schedule.next_run_at if active else None
        items.append(
            {
                "id": str(schedule.id),
                "file_type": schedule.file_type,
                "description": str(schedule.template.get("description") or ""),
                "cron": schedule.cron,
                "timezone": schedule.timezone,
                "status": schedule.status,
                "next_run": (
                    languages.format_datetime(next_run, schedule.timezone, locale)
                    if next_run
                    else None
                ),
                "next_run_at": next_run.isoformat() if next_run else None,
                "ends_at": (
                    languages.format_datetime(schedule.ends_at, schedule.timezone, locale)
                    if schedule.ends_at
                    else None
                ),
            }
        )
    return items


async def end_schedule(request: web.Request, email: str, schedule_id: uuid.UUID) -> str:
    """End one of the address's schedules for good, as its unsubscribe link does."""
    db = request.app[keys.STORE]
    status = await db.my_files.schedule_status(schedule_id, email)
    if status is None:
        return "not-yours"
    if status == "ended" or not await db.schedules.end(schedule_id, ENDED_REASON):
        return "schedule-already-ended"
    return "schedule-ended"
