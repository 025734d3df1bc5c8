"""``POST /schedules``: a ``ScheduleRequested`` over HTTP, for producer services without
access to bgworker's PostgreSQL (the others may call ``Store.schedules.create``, or run
``bgworker schedules create``).

Mounted with the front door (``BGWORKER_WEB__API_KEYS``), behind the same API keys. Strict
JSON (``events.decode_json``: duplicate keys, NaN, lone surrogates refused), validated as the
CLI validates. Idempotent on the schedule's ``id``: 201 when created, 200 when the same
schedule already exists, 409 when another one holds the id. The answer says when it first
fires, in UTC and in the requester's time zone.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final
from zoneinfo import ZoneInfo

from aiohttp import web
from pydantic import ValidationError

from bgworker.contract import events
from bgworker.contract import schedules as contract
from bgworker.store import schedules as stored
from bgworker.web import front_door, keys, responses

ROUTE: Final = "/schedules"
MAX_BODY_BYTES: Final = events.MAX_BODY_BYTES


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
    refused = front_door.refuse_caller(request)
    if refused is not None:
        return refused
    if request.content_type != "application/json":
        return responses.json_response({"error": "the body must be application/json"}, status=415)
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        return responses.json_response({"error": "the body is too large"}, status=413)
    body = await request.content.read(MAX_BODY_BYTES + 1)
    if len(body) > MAX_BODY_BYTES:
        return responses.json_response({"error": "the body is too large"}, status=413)
    try:
        raw = events.decode_json(body)
        schedule = contract.ScheduleRequested.model_validate(raw)
    except events.InvalidEventError as exc:
        return responses.json_response({"error": str(exc)}, status=400)
    except ValidationError as exc:
        errors = [{"location": w, "message": m} for w, m in events.validation_errors(exc)]
        return responses.json_response(
            {"error": events.describe_validation_error(exc), "errors": errors}, status=422
        )
    db = request.app[keys.STORE].schedules
    created = await db.create(schedule, datetime.now(UTC))
    found = await db.get(schedule.id)
    assert found is not None
    if created:
        return _answer(found, 201)
    same = (found.cron, found.ends_at, found.template) == (
        schedule.cron,
        schedule.ends_at,
        schedule.request,
    )
    if not same:
        return responses.json_response(
            {"error": f"schedule {schedule.id} exists with another body"}, status=409
        )
    return _answer(found, 200)
