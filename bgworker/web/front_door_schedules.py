"""``POST /schedules``: a ``ScheduleRequested`` over HTTP, for producer services without
access to bgworker's PostgreSQL (the others may call ``Store.schedules.create``, or run
``bgworker schedules create``).

Mounted with the front door (``BGWORKER_WEB__API_KEYS``), behind the same API keys, and
refused as ``POST /requests`` refuses (``front_door.json_body`` and ``invalid``: 401, 413,
415, 400 for what is not strict JSON, 422 naming the fields at fault, 503 with Retry-After
while PostgreSQL is away). Strict JSON (``events.decode_json``: duplicate keys, NaN, lone
surrogates refused), validated as the CLI validates. Idempotent on the schedule's ``id``:
201 when created, 200 when the same schedule already exists, 409 when another one holds the
id. The answer says when it first fires, in UTC and in the requester's time zone.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final
from zoneinfo import ZoneInfo

from aiohttp import web

from bgworker import faults
from bgworker.contract import events
from bgworker.contract import schedules as contract
from bgworker.store import schedules as stored
from bgworker.web import front_door, keys, responses

ROUTE: Final = "/schedules"


def mount(app: web.Application) -> None:
    app.router.add_post(ROUTE, create_schedule)


def _answer(schedule: stored.Schedule, status: int) -> web.Response:
    nxt = schedule.next_run_at
    return responses.json_response(
        {
            "id": str(schedule.id),
            "status": schedule.status,
            "cron": schedule.cron,
            "timezone": schedule.timezone,
            "next_run_at": nxt.isoformat() if nxt else None,
            "next_run_local": nxt.astimezone(ZoneInfo(schedule.timezone)).isoformat()
            if nxt
            else None,
        },
        status=status,
    )


async def create_schedule(request: web.Request) -> web.Response:
    body = await front_door.json_body(request)
    if isinstance(body, web.Response):
        return body
    try:
        schedule = events.parse_model(body, contract.ScheduleRequested)
    except events.InvalidEventError as exc:
        return front_door.invalid(exc)
    try:
        return await _create(request.app[keys.STORE].schedules, schedule)
    except Exception as exc:
        if faults.is_infrastructure(exc):
            return front_door.unavailable(exc, ROUTE)
        raise


async def _create(db: stored.Schedules, schedule: contract.ScheduleRequested) -> web.Response:
    created = await db.create(schedule, datetime.now(UTC))
    found = await db.get(schedule.id)
    if found is None:  # deleted between the two statements (``bgworker clean``): say so
        return front_door.refusal(409, f"schedule {schedule.id} was deleted meanwhile")
    if created:
        return _answer(found, 201)
    same = (found.cron, found.ends_at, found.template) == (
        schedule.cron,
        schedule.ends_at,
        schedule.request,
    )
    if not same:
        return front_door.refusal(
            409, f"schedule {schedule.id} exists with another body", id=str(schedule.id)
        )
    return _answer(found, 200)
