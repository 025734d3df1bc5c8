"""Schedules: a recurring ``FileRequested`` (``ScheduleRequested``) and its fire times.

A schedule is a cron expression read in the requester's time zone, an optional end, and the
request to publish each period (a ``FileRequested`` without ``id`` and ``requested_at``: the
period fills them). Fire times come from cronsim (five fields, Vixie/Debian cron syntax).

Time zones and daylight saving time, as Debian's cron does them (cronsim's behaviour,
pinned by tests/unit/test_schedule_times.py). For an expression whose minute and hour
fields both name values (neither starts with ``*``: ``30 2 * * *``, ``0 9,17 * * 1-5``):

- a local time that does not exist (the hour skipped when clocks go forward) fires at the
  first instant after the gap, once: ``30 2 * * *`` in Europe/Berlin fires at 03:00 CEST on
  the last Sunday of March;
- a local time that exists twice (the hour repeated when clocks go back) fires once, at its
  first occurrence (``fold=0``).

An expression whose minute or hour field starts with ``*`` (``*/15 * * * *``,
``30 * * * *``, ``0 */2 * * *``) follows elapsed time instead: every matching instant,
so it fires in both copies of a repeated hour and never in a skipped one.

Each period's request id is ``uuid5(schedule id, period in UTC)``: the same period always
makes the same request, so a period published twice (a crash between the broker's confirm
and the commit) is one request to the worker.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final, Literal
from zoneinfo import ZoneInfo

import cronsim
from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from bgworker.contract import event_fields, events

# Missed periods counted at most this far back when a schedule is found late: beyond, the
# count says "at least" (a minutely schedule down for a month is not iterated 43 200 times).
MAX_COUNTED_MISSES: Final = 10_000
MAX_CRON_CHARS: Final = 200
# A request template may not set these: each period gets its own.
PER_PERIOD: Final = ("id", "requested_at")
# The id every template is validated under (a FileRequested needs one).
_PLACEHOLDER_ID: Final = uuid.UUID(int=0)


class InvalidCronError(ValueError):
    pass


def parse_cron(expression: str) -> str:
    """The expression if cronsim reads it as five fields, else InvalidCronError."""
    if len(expression) > MAX_CRON_CHARS or not expression.isprintable():
        raise InvalidCronError(f"a cron expression is at most {MAX_CRON_CHARS} printable chars")
    if len(expression.split()) != 5:
        raise InvalidCronError("a cron expression has five fields: minute hour day month weekday")
    try:
        cronsim.CronSim(expression, datetime(2000, 1, 1, tzinfo=UTC))
    except cronsim.CronSimError as exc:
        raise InvalidCronError(f"not a cron expression: {exc}") from None
    return expression


def _cron(value: str) -> str:
    return parse_cron(value)


Cron = Annotated[
    str,
    Field(
        max_length=MAX_CRON_CHARS,
        description=(
            "Five fields (minute hour day-of-month month day-of-week), read in the "
            "requester's time zone; e.g. `0 8 * * 1` is Mondays at 08:00."
        ),
    ),
    AfterValidator(_cron),
]


def template_event(template: dict[str, Any]) -> events.FileRequested:
    """The template as the FileRequested it will publish (placeholder id); ValueError when
    a request could not be made of it."""
    clash = [name for name in PER_PERIOD if name in template]
    if clash:
        raise ValueError(f"request: {', '.join(clash)} is set per period, leave it out")
    return events.FileRequested.model_validate({**template, "id": str(_PLACEHOLDER_ID)})


class ScheduleRequested(BaseModel):
    """A recurring request: ``request`` is published once per period of ``cron`` (read in
    the requester's time zone) until ``ends_at``, the requester unsubscribes, or an
    operator ends it. ``id`` is the idempotency key: creating it twice is one schedule."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    id: event_fields.Uuid = Field(description="Made by the producer; the schedule's id.")
    cron: Cron
    ends_at: AwareDatetime | None = Field(
        None, description="No period after this instant is published; null: no end."
    )
    request: dict[str, Any] = Field(
        description=(
            "A FileRequested without `id` and `requested_at`: what each period publishes "
            "(validated as one). Its requester's timezone is the schedule's."
        ),
        json_schema_extra={
            "required": ["file_type"],
            "not": {"anyOf": [{"required": [name]} for name in PER_PERIOD]},
            "x-bgworker-file-requested": "FileRequested.json",
        },
    )

    @model_validator(mode="after")
    def _valid_template(self) -> ScheduleRequested:
        template_event(self.request)
        return self

    @property
    def event(self) -> events.FileRequested:
        return template_event(self.request)

    @property
    def timezone(self) -> str:
        requester = self.event.requester
        return requester.timezone if requester else "UTC"


def fire_times(cron: str, timezone: str, after: datetime) -> Iterator[datetime]:
    """Fire times strictly after ``after``, in UTC, increasing."""
    zone = ZoneInfo(timezone)
    # cronsim starts at the next whole minute after its start; a start on a whole minute
    # is itself a candidate, so step back a microsecond to make "after" strict.
    start = after.astimezone(zone) - timedelta(microseconds=1)
    for moment in cronsim.CronSim(cron, start):
        if moment.astimezone(UTC) > after:
            yield moment.astimezone(UTC)


def next_fire(cron: str, timezone: str, after: datetime) -> datetime:
    return next(fire_times(cron, timezone, after))


def period_id(schedule_id: uuid.UUID, period: datetime) -> uuid.UUID:
    """The request id of one period: the same every time it is computed."""
    return uuid.uuid5(schedule_id, period.astimezone(UTC).isoformat())


class Due:
    """What a schedule found due at ``now`` publishes: the LATEST period at or before
    ``now`` (older missed ones are skipped and counted), and when it fires next."""

    def __init__(self, cron: str, timezone: str, next_run_at: datetime, now: datetime) -> None:
        self.period = next_run_at
        self.missed = 0
        for moment in fire_times(cron, timezone, next_run_at):
            if moment > now:
                self.following = moment
                break
            self.missed += 1
            self.period = moment
            if self.missed >= MAX_COUNTED_MISSES:
                # Jump: the latest fire time at or before now, found from a minute earlier.
                self.period = _latest_at_or_before(cron, timezone, now, self.period)
                self.following = next_fire(cron, timezone, now)
                break


def _latest_at_or_before(cron: str, timezone: str, now: datetime, floor: datetime) -> datetime:
    """The last fire time in (floor, now], searching back a day at a time from ``now``."""
    start = now
    while start > floor:
        start = max(floor, start - timedelta(days=1))
        found = None
        for moment in fire_times(cron, timezone, start):
            if moment > now:
                break
            found = moment
        if found is not None:
            return found
    return floor


def json_schemas() -> dict[str, str]:
    """``ScheduleRequested.json`` for ``bgworker schemas export``: the body ``bgworker
    schedules create`` and ``store.schedules`` take (not an AMQP message)."""
    schema = ScheduleRequested.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://bgworker.dev/schemas/ScheduleRequested.v1.json"
    return {"ScheduleRequested.json": json.dumps(schema, indent=2, sort_keys=True) + "\n"}
