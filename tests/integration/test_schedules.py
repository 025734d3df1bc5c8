"""Schedules end to end (issue 23): created, fired by a worker, built, emailed with a
one-click unsubscribe, downloaded, unsubscribed; the missed-period rule after downtime.

"Time passes" by moving a schedule's ``next_run_at`` into the past in PostgreSQL (the clock
the workers read is PostgreSQL's ``now()``): the same state a schedule is in after its
fire time went by, without waiting for a real minute.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from bgworker import settings as settings_mod
from bgworker import storage, store
from bgworker.contract import schedules as contract
from bgworker.observe import metrics
from bgworker.ops import erasure as ops_erasure
from bgworker.store import erasure
from tests.helpers import StartServer, StartWorker, must_match, wait_for_status, wait_until

pytestmark = pytest.mark.asyncio

EMAIL = "ann@example.com"


def schedule_request(**overrides: Any) -> contract.ScheduleRequested:
    body: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "cron": "0 8 * * 1",
        "request": {
            "file_type": "blob",
            "criteria": {"size": 1000, "seed": 7},
            "filename": "weekly.bin",
            "description": "weekly report",
            "requester": {"id": "ann", "email": EMAIL, "timezone": "Europe/Paris"},
        },
    }
    body.update(overrides)
    return contract.ScheduleRequested.model_validate(body)


async def make_due(db: store.Store, schedule_id: uuid.UUID, ago: timedelta) -> datetime:
    """As if the schedule's next fire time had passed ``ago`` ago: that fire time, on the
    cron (so the period is one the expression names)."""
    schedule = await db.schedules.get(schedule_id)
    assert schedule is not None
    cutoff = datetime.now(UTC) - ago
    fire = cutoff
    for moment in contract.fire_times(schedule.cron, schedule.timezone, cutoff - timedelta(8)):
        if moment > cutoff:
            break
        fire = moment  # the latest fire time at or before the cutoff
    await db.pool.execute(
        "UPDATE bgworker_schedules SET next_run_at = $2 WHERE id = $1", schedule_id, fire
    )
    return fire


async def runs(db: store.Store, schedule_id: uuid.UUID) -> list[Any]:
    found: list[Any] = await db.pool.fetch(
        "SELECT period, request_id, published_at FROM bgworker_schedule_runs "
        "WHERE schedule_id = $1 ORDER BY period",
        schedule_id,
    )
    return found


async def test_a_schedule_from_creation_to_email_to_download_to_unsubscribe(
    db: store.Store,
    settings: settings_mod.Settings,
    start_worker: StartWorker,
    start_server: StartServer,
    smtp_sink: Any,
) -> None:
    base = await start_server()
    settings.web.public_url = base
    request = schedule_request()
    assert await db.schedules.create(request, datetime.now(UTC))
    assert not await db.schedules.create(request, datetime.now(UTC))  # idempotent by id
    created = await db.schedules.get(request.id)
    assert created is not None and created.status == "active" and created.next_run_at
    # The first fire time is a Monday 08:00 in Paris.
    local = created.next_run_at.astimezone(ZoneInfo("Europe/Paris"))
    assert (local.weekday(), local.hour, local.minute) == (0, 8, 0)

    await start_worker()
    period = await make_due(db, request.id, timedelta(minutes=1))
    request_id = contract.period_id(request.id, period)
    row = await wait_for_status(db, request_id, "ready", timeout=60)
    assert row.requested_at == period
    assert row.event["description"] == "weekly report"

    [mail] = await smtp_sink.wait_for(1, timeout=30)
    assert mail["To"] == EMAIL
    header = str(mail["List-Unsubscribe"])
    url = must_match(r"^<(http://[^>]+/schedules/unsubscribe\?token=[A-Za-z0-9_.-]+)>$", header)[1]
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    text = mail.get_body(("plain",)).get_content()
    assert url in text
    download = must_match(r"(http://\S+/download/\S+)", text)[1]

    after = await db.schedules.get(request.id)
    assert after is not None and after.runs == 1 and after.next_run_at is not None
    assert after.next_run_at > datetime.now(UTC)  # moved past now, not to the next missed one

    async with aiohttp.ClientSession() as http:
        async with http.get(download) as got:
            assert got.status == 200
            assert len(await got.read()) == 1000
        # GET shows a confirmation and never ends the schedule (mail scanners fetch links).
        for _ in range(2):
            async with http.get(url) as page:
                assert page.status == 200
                body = await page.text()
                assert 'method="post"' in body and "weekly report" in body
        still = await db.schedules.get(request.id)
        assert still is not None and still.status == "active"
        # A tampered token is refused on both methods, and ends nothing.
        tampered = url[:-3] + ("AAA" if not url.endswith("AAA") else "BBB")
        for method in ("GET", "POST"):
            async with http.request(method, tampered) as refused:
                assert refused.status == 400
        # A download token is not an unsubscribe token (salts differ).
        foreign = url.split("token=")[0] + "token=" + download.rsplit("/", 1)[1]
        async with http.post(foreign, data={"List-Unsubscribe": "One-Click"}) as refused:
            assert refused.status == 400
        still = await db.schedules.get(request.id)
        assert still is not None and still.status == "active"
        # The one-click POST, as RFC 8058 mail clients send it.
        async with http.post(url, data={"List-Unsubscribe": "One-Click"}) as ended:
            assert ended.status == 200
            assert "Schedule stopped" in await ended.text()
        async with http.post(url, data={"List-Unsubscribe": "One-Click"}) as again:
            assert again.status == 200  # a client's retry sees success
    gone = await db.schedules.get(request.id)
    assert gone is not None and gone.status == "ended" and gone.ended_reason == "unsubscribed"
    assert gone.next_run_at is None


async def test_after_downtime_only_the_latest_missed_period_is_published(
    db: store.Store, start_worker: StartWorker
) -> None:
    # Hourly; the workers were "down" for 5 hours and a half: periods at -5h..-1h and the
    # one 30 minutes ago fell meanwhile. Only the latest is published; the others counted.
    request = schedule_request(cron="30 * * * *")
    assert await db.schedules.create(request, datetime.now(UTC))
    now = datetime.now(UTC)
    latest = contract.next_fire(request.cron, "Europe/Paris", now - timedelta(hours=1))
    oldest = latest - timedelta(hours=5)
    await db.pool.execute(
        "UPDATE bgworker_schedules SET next_run_at = $2 WHERE id = $1", request.id, oldest
    )
    await start_worker()
    await wait_for_status(db, contract.period_id(request.id, latest), "ready", timeout=60)
    recorded = await runs(db, request.id)
    assert [r["period"] for r in recorded] == [latest]
    schedule = await db.schedules.get(request.id)
    assert schedule is not None
    assert (schedule.runs, schedule.skipped) == (1, 5)
    assert schedule.next_run_at == contract.next_fire(request.cron, "Europe/Paris", latest)
    for hours in range(1, 6):
        older = contract.period_id(request.id, latest - timedelta(hours=hours))
        assert await db.requests.get_request(older) is None


async def test_an_end_date_ends_the_schedule_after_its_last_period(
    db: store.Store, start_worker: StartWorker
) -> None:
    request = schedule_request(cron="*/5 * * * *")
    assert await db.schedules.create(request, datetime.now(UTC))
    period = await make_due(db, request.id, timedelta(minutes=1))
    await db.pool.execute(
        "UPDATE bgworker_schedules SET ends_at = $2 WHERE id = $1", request.id, period
    )
    await start_worker()
    await wait_for_status(db, contract.period_id(request.id, period), "ready", timeout=60)
    await wait_until(lambda: _status(db, request.id, "ended"))
    ended = await db.schedules.get(request.id)
    assert ended is not None and ended.ended_reason == "end_date" and ended.runs == 1


async def _status(db: store.Store, schedule_id: uuid.UUID, status: str) -> bool:
    found = await db.schedules.get(schedule_id)
    return found is not None and found.status == status


async def test_a_period_recorded_twice_is_one_request(db: store.Store) -> None:
    # Two firings of one period (a holder whose lease was taken over mid-round): the
    # second is fenced out by the lease token, and the period's row stays single.
    request = schedule_request()
    assert await db.schedules.create(request, datetime.now(UTC))
    await make_due(db, request.id, timedelta(minutes=1))
    [first] = await db.schedules.claim("w1", 5, 10)
    assert first.due
    await db.pool.execute(
        "UPDATE bgworker_schedules SET lease_expires_at = now() - interval '1 s' WHERE id = $1",
        request.id,
    )
    [second] = await db.schedules.claim("w2", 5, 10)
    assert second.lease_token != first.lease_token
    assert await db.schedules.fire(first) is None  # fenced: w1 lost its lease
    fired = await db.schedules.fire(second)
    assert fired is not None and fired.period is not None
    assert await db.schedules.fire(second) is None  # not due any more
    assert len(await runs(db, request.id)) == 1


async def test_pause_resume_end(db: store.Store) -> None:
    request = schedule_request()
    now = datetime.now(UTC)
    assert await db.schedules.create(request, now)
    assert await db.schedules.pause(request.id)
    assert not await db.schedules.pause(request.id)
    assert await db.schedules.claim("w", 5, 10) == []  # a paused schedule is never held
    assert await db.schedules.resume(request.id, now + timedelta(days=30))
    resumed = await db.schedules.get(request.id)
    assert resumed is not None and resumed.status == "active"
    assert resumed.next_run_at == contract.next_fire(
        request.cron, "Europe/Paris", now + timedelta(days=30)
    )
    assert await db.schedules.end(request.id, "operator")
    assert not await db.schedules.resume(request.id, now)
    assert not await db.schedules.end(request.id, "operator")
    assert [s.id for s in await db.schedules.list("ended")] == [request.id]


async def test_forget_erases_the_persons_schedules_and_their_periods(db: store.Store) -> None:
    mine, theirs = schedule_request(), schedule_request()
    other = {**theirs.request, "requester": {"email": "bo@example.com"}}
    theirs = contract.ScheduleRequested.model_validate(
        {"id": str(theirs.id), "cron": theirs.cron, "request": other}
    )
    for s in (mine, theirs):
        assert await db.schedules.create(s, datetime.now(UTC))
    await make_due(db, mine.id, timedelta(minutes=1))
    held = next(h for h in await db.schedules.claim("w", 5, 10) if h.id == mine.id)
    assert await db.schedules.fire(held) is not None
    erased = await db.erasure.erase(erasure.Subject.requester(EMAIL.upper()))
    assert erased.schedules == 1
    assert await db.schedules.get(mine.id) is None
    assert await runs(db, mine.id) == []  # the recorded period went with it
    assert await db.schedules.get(theirs.id) is not None


async def test_forget_counts_the_schedules_in_its_report_and_metrics(
    settings: settings_mod.Settings, db: store.Store
) -> None:
    request = schedule_request()
    assert await db.schedules.create(request, datetime.now(UTC))
    before = erased_total("schedules")
    async with storage.opened(settings) as files:
        report = await ops_erasure.forget(
            db, files, None, erasure.Subject.requester(EMAIL), actor="test"
        )
    assert report.schedules == 1 and erased_total("schedules") == before + 1
    assert await db.schedules.get(request.id) is None
    # The audit row, which outlives the report, counts them too (migration 0019).
    [audit] = [row for row in await db.erasure.audit() if row["id"] == report.audit_id]
    assert audit["schedules"] == 1 and audit["actor"] == "test"


def erased_total(kind: str) -> float:
    found = metrics.MAINTENANCE.get_sample_value("bgworker_erased_total", {"kind": kind})
    return found or 0.0


async def test_a_worker_holding_a_full_batch_still_takes_the_rest(db: store.Store) -> None:
    # Renewing what it holds never uses up the batch: more schedules than one round's batch
    # are all held after enough rounds (and so all fire), by a single worker.
    made = [schedule_request() for _ in range(5)]
    for s in made:
        assert await db.schedules.create(s, datetime.now(UTC))
    held: list[Any] = []
    for _ in range(3):
        held = await db.schedules.claim("only", 5, 2)
    assert sorted(h.id for h in held) == sorted(s.id for s in made)
    assert len({h.lease_token for h in held}) == 5
    assert await db.schedules.claim("other", 5, 10) == []  # all held, none expired


async def test_the_failure_email_of_a_period_carries_the_unsubscribe_too(
    db: store.Store, start_worker: StartWorker, smtp_sink: Any
) -> None:
    request = schedule_request(request={"file_type": "permanent", "requester": {"email": EMAIL}})
    assert await db.schedules.create(request, datetime.now(UTC))
    period = await make_due(db, request.id, timedelta(minutes=1))
    await start_worker()
    await wait_for_status(db, contract.period_id(request.id, period), "failed", timeout=60)
    [mail] = await smtp_sink.wait_for(1, timeout=30)
    assert "/schedules/unsubscribe?token=" in str(mail["List-Unsubscribe"])
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


async def test_an_ordinary_request_email_has_no_unsubscribe(
    start_worker: StartWorker, publish: Any, db: store.Store, smtp_sink: Any
) -> None:
    await start_worker()
    event = await publish("blob", {"size": 10, "seed": 1}, requester={"email": EMAIL})
    await wait_for_status(db, event.id, "ready")
    [mail] = await smtp_sink.wait_for(1, timeout=30)
    assert mail["List-Unsubscribe"] is None and mail["List-Unsubscribe-Post"] is None
    text = mail.get_body(("plain",)).get_content()
    assert "schedule" not in text
