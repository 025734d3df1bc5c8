"""``bgworker schedules create|list|pause|resume|end``: schedules from the command line.

``create`` reads a ``ScheduleRequested`` (JSON, from a file or ``-`` for stdin) and records
it; the workers publish it from then on. ``pause`` stops publishing (the lease is dropped),
``resume`` starts again from the next fire time after now (periods while paused are not
made up for), ``end`` ends it for good (as the requester's unsubscribe does).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.contract import events
from bgworker.contract import schedules as contract
from bgworker.store import schedules as stored

EXIT_FAILED = 1


def _row(s: stored.Schedule) -> dict[str, object]:
    return {
        "id": str(s.id),
        "status": s.status,
        "cron": s.cron,
        "timezone": s.timezone,
        "file_type": s.file_type,
        "requester": s.requester_email or s.requester_id or "",
        "next_run_at": s.next_run_at.isoformat() if s.next_run_at else None,
        "last_period": s.last_period.isoformat() if s.last_period else None,
        "ends_at": s.ends_at.isoformat() if s.ends_at else None,
        "runs": s.runs,
        "skipped": s.skipped,
        "ended_reason": s.ended_reason,
        "held_by": s.lease_owner,
    }


def _read(source: str) -> contract.ScheduleRequested:
    text = sys.stdin.read() if source == "-" else Path(source).read_text()
    return contract.ScheduleRequested.model_validate_json(text)


async def run(settings: settings_mod.Settings, args: argparse.Namespace) -> int:
    action = args.schedules_command
    now = datetime.now(UTC)
    if action == "create":
        try:
            schedule = _read(args.file)
        except ValidationError as exc:
            print(f"schedules: {events.describe_validation_error(exc)}", file=sys.stderr)
            return EXIT_FAILED
    async with store.opened(settings.database_url.get_secret_value()) as db:
        if action == "create":
            created = await db.schedules.create(schedule, now)
            got = await db.schedules.get(schedule.id)
            assert got is not None
            print(
                f"schedule {schedule.id} {'created' if created else 'already exists'}; "
                f"next run {got.next_run_at.isoformat() if got.next_run_at else '-'}"
            )
            return 0
        if action == "list":
            rows = await db.schedules.list(args.status, args.limit)
            if args.json:
                print(json.dumps([_row(s) for s in rows], indent=2))
                return 0
            print(f"{'ID':36}  {'STATUS':7}  {'CRON':16}  {'TIMEZONE':20}  NEXT RUN (UTC)")
            for s in rows:
                nxt = s.next_run_at.isoformat(timespec="minutes") if s.next_run_at else "-"
                print(f"{s.id!s:36}  {s.status:7}  {s.cron:16}  {s.timezone:20}  {nxt}")
            return 0
        if action == "pause":
            done = await db.schedules.pause(args.id)
        elif action == "resume":
            done = await db.schedules.resume(args.id, now)
        else:
            done = await db.schedules.end(args.id, "operator")
        if not done:
            found = await db.schedules.get(args.id)
            state = found.status if found else "not found"
            print(f"schedules: {args.id}: cannot {action} ({state})", file=sys.stderr)
            return EXIT_FAILED
        print(f"schedule {args.id}: {action}d" if action != "end" else f"schedule {args.id}: ended")
        return 0
