"""Schedules in PostgreSQL (``schedules.sql``; ``Store.schedules``).

Invariants: a worker fires a schedule only under its lease token (taken by
``schedule_claim``, checked again under ``FOR UPDATE`` when firing), and one transaction
records the period's request and advances ``next_run_at``: a worker killed before the commit
leaves the period unfired (the next holder fires it), one killed after it leaves it fired.
The period's row (primary key schedule, period; its request id ``uuid5``) is published from
``bgworker_schedule_runs`` with the broker's confirm before being marked, so a crash in
between publishes it again under the same request id, which the worker drops as a duplicate.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import asyncpg

from bgworker.contract import events
from bgworker.contract import schedules as contract
from bgworker.store import queries

Q: Final = queries.QUERIES
bind: Final = queries.bind


@dataclass(frozen=True)
class Schedule:
    id: uuid.UUID
    cron: str
    timezone: str
    ends_at: datetime | None
    template: dict[str, Any]
    file_type: str
    requester_id: str | None
    requester_email: str | None
    tenant: str
    status: str
    ended_reason: str | None
    next_run_at: datetime | None
    last_period: datetime | None
    runs: int
    skipped: int
    lease_owner: str | None
    created_at: datetime

    @classmethod
    def from_record(cls, r: asyncpg.Record) -> Schedule:
        return cls(**{name: r[name] for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Held:
    id: uuid.UUID
    lease_token: uuid.UUID
    due: bool


@dataclass(frozen=True)
class Fired:
    """One firing: the period published (None: none, the schedule had ended), how many
    older periods were skipped, and whether the schedule ended with it."""

    period: datetime | None
    request_id: uuid.UUID | None
    missed: int
    ended: bool


def period_event(schedule: Schedule, period: datetime) -> dict[str, Any]:
    """The FileRequested of one period: the template with the period's id and time."""
    return {
        **schedule.template,
        "id": str(contract.period_id(schedule.id, period)),
        "requested_at": period.isoformat(),
    }


class Schedules:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def create(self, schedule: contract.ScheduleRequested, now: datetime) -> bool:
        """Record it, first fire time after ``now``; False if the id was already taken."""
        event = schedule.event
        requester = event.requester
        first = contract.next_fire(schedule.cron, schedule.timezone, now)
        created = await self.pool.fetchval(
            *bind(
                "schedule_create",
                id=schedule.id,
                cron=schedule.cron,
                timezone=schedule.timezone,
                ends_at=schedule.ends_at,
                template=schedule.request,
                file_type=event.file_type,
                requester_id=requester.id if requester else None,
                requester_email=requester.email if requester else None,
                tenant=events.tenant_of(event),
                next_run_at=first,
            )
        )
        return created is not None

    async def claim(self, worker: str, lease_seconds: float, batch: int) -> list[Held]:
        """Renew every schedule ``worker`` holds, then take up to ``batch`` free ones: what
        it holds now."""
        renewed = await self.pool.fetch(
            *bind("schedule_renew", worker=worker, lease_seconds=lease_seconds)
        )
        taken = await self.pool.fetch(
            *bind("schedule_claim", worker=worker, lease_seconds=lease_seconds, batch=batch)
        )
        return [Held(r["id"], r["lease_token"], r["due"]) for r in [*renewed, *taken]]

    async def fire(self, held: Held) -> Fired | None:
        """Fire a held, due schedule in one transaction: the latest period at or before
        now is recorded (older missed ones skipped and counted), next_run_at moves past now.
        None: not ours any more, or not due."""
        async with self.pool.acquire() as conn, conn.transaction():
            record = await conn.fetchrow(Q["schedule_lock_due"], held.id, held.lease_token)
            if record is None:
                return None
            schedule = Schedule.from_record(record)
            now: datetime = record["db_now"]
            assert schedule.next_run_at is not None  # active: it has one
            # No period after the end is published; a missed one before it still is.
            ends = schedule.ends_at
            horizon = now if ends is None else min(now, ends)
            period: datetime | None = None
            missed = 0
            if schedule.next_run_at <= horizon:
                due = contract.Due(schedule.cron, schedule.timezone, schedule.next_run_at, horizon)
                period, missed = due.period, due.missed
            following = contract.next_fire(schedule.cron, schedule.timezone, now)
            request_id = None
            if period is not None:
                event = period_event(schedule, period)
                request_id = uuid.UUID(event["id"])
                await conn.fetchval(
                    Q["schedule_record_run"], schedule.id, period, request_id, event
                )
            ended = ends is not None and following > ends
            await conn.execute(
                *bind(
                    "schedule_advance",
                    id=schedule.id,
                    lease_token=held.lease_token,
                    next_run_at=following,
                    last_period=period,
                    missed=missed,
                    ended=ended,
                )
            )
        return Fired(period, request_id, missed, ended)

    async def publish_runs(
        self, batch: int, publish: Callable[[uuid.UUID, dict[str, Any]], Awaitable[None]]
    ) -> int:
        """Publish recorded periods, each confirmed, marked in the transaction that locked
        them (the producer outbox's relay, for schedules); how many."""
        async with self.pool.acquire() as conn, conn.transaction():
            records = await conn.fetch(Q["schedule_runs_take"], batch)
            for r in records:
                await publish(r["request_id"], r["event"])
            if records:
                await conn.execute(Q["schedule_runs_published"], [r["request_id"] for r in records])
        return len(records)

    async def release(self, worker: str) -> None:
        await self.pool.execute(Q["schedule_release"], worker)

    async def get(self, schedule_id: uuid.UUID) -> Schedule | None:
        record = await self.pool.fetchrow(Q["schedule_get"], schedule_id)
        return None if record is None else Schedule.from_record(record)

    async def list(self, status: str | None = None, limit: int = 100) -> list[Schedule]:
        records = await self.pool.fetch(Q["schedule_list"], status, limit)
        return [Schedule.from_record(r) for r in records]

    async def pause(self, schedule_id: uuid.UUID) -> bool:
        return await self.pool.fetchval(Q["schedule_pause"], schedule_id) is not None

    async def resume(self, schedule_id: uuid.UUID, now: datetime) -> bool:
        """Active again from the next fire time after ``now``: periods that fell while it
        was paused are not made up for."""
        schedule = await self.get(schedule_id)
        if schedule is None or schedule.status != "paused":
            return False
        following = contract.next_fire(schedule.cron, schedule.timezone, now)
        if schedule.ends_at is not None and following > schedule.ends_at:
            return await self.end(schedule_id, "end_date")
        return await self.pool.fetchval(Q["schedule_resume"], schedule_id, following) is not None

    async def end(self, schedule_id: uuid.UUID, reason: str) -> bool:
        """Ended for good (``unsubscribed``, ``operator``, ``end_date``); False when it was
        already ended or does not exist."""
        return await self.pool.fetchval(Q["schedule_end"], schedule_id, reason) is not None

    async def schedule_of(self, request_id: uuid.UUID) -> uuid.UUID | None:
        found: uuid.UUID | None = await self.pool.fetchval(Q["schedule_of_request"], request_id)
        return found
