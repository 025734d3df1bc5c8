"""Retention of issue 23's tables: `bgworker clean` prunes bundle rows once their parts'
rows are gone, schedules' published periods and ended schedules after ROWS_DAYS, in
batches, and keeps what is still needed: a bundle naming a part, a live schedule's latest
period, a period not published yet, a schedule not ended. Real PostgreSQL (and RabbitMQ and
a worker for the bundles); the clock is the one thing faked (rows are moved into the past)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.contract import retention
from bgworker.ops import retention as ops_retention
from tests.helpers import StartWorker
from tests.integration.test_my_files_sections import _bundle
from tests.integration.test_schedules import make_due, schedule_request

OLD = timedelta(days=100)  # past the default ROWS_DAYS (90)
YOUNG = timedelta(days=1)


async def shift(db: store.Store, table: str, where: str, key: uuid.UUID, by: timedelta) -> None:
    """Move the times of ``table``'s rows whose ``where`` is ``key`` ``by`` into the past."""
    columns = {
        "bgworker_bundles": ("created_at", "finished_at"),
        "bgworker_requests": ("finished_at", "expires_at"),
        "bgworker_schedule_runs": ("created_at", "published_at"),
    }[table]
    moved = ", ".join(f"{c} = {c} - $2::interval" for c in columns)
    await db.pool.execute(f"UPDATE {table} SET {moved} WHERE {where} = $1", key, by)


async def age_bundle(db: store.Store, bundle_id: uuid.UUID, by: timedelta) -> None:
    """Move a finished bundle and its parts ``by`` into the past."""
    await shift(db, "bgworker_bundles", "id", bundle_id, by)
    await shift(db, "bgworker_requests", "bundle_id", bundle_id, by)


async def bundle_ids(db: store.Store) -> set[uuid.UUID]:
    return {r["id"] for r in await db.pool.fetch("SELECT id FROM bgworker_bundles")}


@pytest.mark.usefixtures("amqp")
async def test_bundles_go_once_their_parts_are_pruned_and_not_before(
    settings: settings_mod.Settings, db: store.Store, start_worker: StartWorker
) -> None:
    await start_worker()
    made = [await _bundle(settings, db, f"b{i}@example.com") for i in range(4)]
    old1, old2, young, held = made
    for bundle_id in (old1, old2, held):
        await age_bundle(db, bundle_id, OLD)
    await age_bundle(db, young, YOUNG)
    # One part of an old bundle whose file still lives (a long lifetime): its row stays,
    # so its bundle stays too (its ZIP is still downloadable).
    kept_part = await db.pool.fetchval(
        "UPDATE bgworker_requests SET expires_at = now() + interval '1 day' "
        "WHERE bundle_id = $1 AND bundle_index = 0 RETURNING id",
        held,
    )
    policy = retention.RetentionSettings(batch_size=1)  # every bundle its own batch

    preview = await ops_retention.prune(db, policy, None, dry_run=True)
    assert preview["bundles"] == 0  # the parts' rows are still there in a dry run
    assert await bundle_ids(db) == set(made)
    pruned = await ops_retention.prune(db, policy, None)
    assert pruned["rows"] == 5 and pruned["bundles"] == 2
    assert preview["bundle_addresses"] == pruned["bundle_addresses"] == 3
    assert await bundle_ids(db) == {young, held}
    # The old bundle still kept lost its address with its parts (ADDRESSES_DAYS); the
    # young one has it.
    scrubbed = await db.bundles.get(held)
    assert scrubbed is not None and scrubbed.requester_email is None
    assert "email" not in scrubbed.event.get("requester", {})
    kept = await db.bundles.get(young)
    assert kept is not None and kept.requester_email == "b2@example.com"
    assert kept.event["requester"]["email"] == "b2@example.com"
    part = await db.requests.get_request(kept_part)
    assert part is not None
    assert await db.pool.fetchval("SELECT bundle_id FROM bgworker_requests WHERE id = $1", part.id)
    assert (await ops_retention.prune(db, policy, None))["bundles"] == 0


async def fired(db: store.Store, **overrides: Any) -> tuple[uuid.UUID, datetime]:
    """A schedule fired once for real (claim, fire, publish): its id and that period."""
    request = schedule_request(**overrides)
    assert await db.schedules.create(request, datetime.now(UTC))
    await make_due(db, request.id, timedelta(minutes=1))
    held = [h for h in await db.schedules.claim("w", 30, 100) if h.id == request.id]
    assert held
    result = await db.schedules.fire(held[0])
    assert result is not None and result.period is not None

    async def published(request_id: uuid.UUID, event: dict[str, Any]) -> None:
        pass

    while await db.schedules.publish_runs(100, published):
        pass
    return request.id, result.period


async def history(
    db: store.Store, schedule_id: uuid.UUID, latest: datetime, weeks: int, *, published: bool
) -> None:
    """``weeks`` earlier periods, as if fired before ``latest``."""
    for week in range(1, weeks + 1):
        await db.pool.execute(
            "INSERT INTO bgworker_schedule_runs (schedule_id, period, request_id, event, "
            "published_at) VALUES ($1, $2, $3, '{}', CASE WHEN $4 THEN now() END)",
            schedule_id,
            latest - timedelta(weeks=week),
            uuid.uuid4(),
            published,
        )


async def age_runs(db: store.Store, schedule_id: uuid.UUID, by: timedelta) -> None:
    await shift(db, "bgworker_schedule_runs", "schedule_id", schedule_id, by)


async def with_history(
    db: store.Store, weeks: int, *, published: bool = True, by: timedelta | None = None
) -> tuple[uuid.UUID, datetime]:
    """A schedule fired once, ``weeks`` earlier periods, all moved ``by`` into the past."""
    schedule_id, latest = await fired(db)
    await history(db, schedule_id, latest, weeks, published=published)
    if by is not None:
        await age_runs(db, schedule_id, by)
    return schedule_id, latest


async def periods(db: store.Store, schedule_id: uuid.UUID) -> list[datetime]:
    return [
        r["period"]
        for r in await db.pool.fetch(
            "SELECT period FROM bgworker_schedule_runs WHERE schedule_id = $1 ORDER BY period",
            schedule_id,
        )
    ]


async def end(db: store.Store, schedule_id: uuid.UUID, ago: timedelta) -> None:
    assert await db.schedules.end(schedule_id, "unsubscribed")
    await db.pool.execute(
        "UPDATE bgworker_schedules SET updated_at = now() - $2::interval WHERE id = $1",
        schedule_id,
        ago,
    )


async def test_schedule_periods_and_ended_schedules_go_after_rows_days(db: store.Store) -> None:
    # A live schedule with three old periods before its latest, itself old too.
    live, latest = await with_history(db, 3, by=OLD)
    # A live schedule whose periods are recent.
    recent, _ = await with_history(db, 2, by=YOUNG)
    # A live schedule with an old period never confirmed published: still work.
    pending, _ = await with_history(db, 1, published=False, by=OLD)
    # A paused schedule untouched for long: not ended, so kept, with its latest period.
    paused, _ = await with_history(db, 0, by=OLD)
    assert await db.schedules.pause(paused)
    await db.pool.execute(
        "UPDATE bgworker_schedules SET updated_at = now() - interval '200 days' WHERE id = $1",
        paused,
    )
    # Ended (unsubscribed) long ago: goes, with its periods.
    gone, _ = await with_history(db, 2)
    await end(db, gone, OLD)
    # Ended yesterday after old periods: the schedule stays, its old periods (the latest
    # too: it fires no more) go.
    ended_now, _ = await with_history(db, 1, by=OLD)
    await end(db, ended_now, YOUNG)
    # Ended long ago with a period never published: waits for it.
    stuck, _ = await with_history(db, 1, published=False)
    await end(db, stuck, OLD)

    policy = retention.RetentionSettings(batch_size=2)  # several batches of each
    preview = await ops_retention.prune(db, policy, None, dry_run=True)
    assert len(await periods(db, live)) == 4  # a dry run changes nothing
    pruned = await ops_retention.prune(db, policy, None)
    assert preview["schedule_runs"] == pruned["schedule_runs"] == 3 + 2
    assert preview["schedules"] == pruned["schedules"] == 1

    assert await periods(db, live) == [latest]
    assert len(await periods(db, recent)) == 3
    assert len(await periods(db, pending)) == 2
    assert len(await periods(db, paused)) == 1
    assert await db.schedules.get(gone) is None and await periods(db, gone) == []
    assert await db.schedules.get(ended_now) is not None and await periods(db, ended_now) == []
    assert await db.schedules.get(stuck) is not None and len(await periods(db, stuck)) == 2
    assert await db.schedules.get(paused) is not None
    again = await ops_retention.prune(db, policy, None)
    assert again["schedule_runs"] == 0 and again["schedules"] == 0


async def test_a_period_whose_request_is_in_progress_is_kept(db: store.Store) -> None:
    schedule_id, latest = await with_history(db, 1, by=OLD)
    await end(db, schedule_id, OLD)
    # The older period's request is still being built (its email will look the schedule
    # up by the period's row: schedule_of_request).
    request_id = await db.pool.fetchval(
        "SELECT request_id FROM bgworker_schedule_runs WHERE schedule_id = $1 AND period < $2",
        schedule_id,
        latest,
    )
    await db.pool.execute(
        "INSERT INTO bgworker_requests (id, file_type, status, event, filename, content_type, "
        "requested_at) VALUES ($1, 'blob', 'running', '{}', '', 'application/octet-stream', "
        "now())",
        request_id,
    )
    policy = retention.RetentionSettings(batch_size=1)
    pruned = await ops_retention.prune(db, policy, None)
    assert pruned["schedule_runs"] == 1 and pruned["schedules"] == 0
    assert await periods(db, schedule_id) == [latest - timedelta(weeks=1)]
    assert await db.schedules.schedule_of(request_id) == schedule_id
    await db.pool.execute(
        "UPDATE bgworker_requests SET status = 'failed' WHERE id = $1", request_id
    )
    pruned = await ops_retention.prune(db, policy, None)
    assert pruned["schedules"] == 1 and await db.schedules.get(schedule_id) is None


async def test_a_period_or_schedule_someone_holds_is_skipped_not_waited_for(
    db: store.Store, database_url: str
) -> None:
    live, latest = await with_history(db, 3, by=OLD)
    gone, _ = await with_history(db, 0)
    await end(db, gone, OLD)
    held_period = latest - timedelta(weeks=2)
    other = await asyncpg.connect(database_url)
    try:
        tx = other.transaction()
        await tx.start()
        await other.execute(
            "SELECT 1 FROM bgworker_schedule_runs WHERE schedule_id = $1 AND period = $2 "
            "FOR UPDATE",
            live,
            held_period,
        )
        await other.execute("SELECT 1 FROM bgworker_schedules WHERE id = $1 FOR UPDATE", gone)
        policy = retention.RetentionSettings(batch_size=1)
        # Bounded only as a guard against a hang: a lock waited for would never return.
        pruned = await asyncio.wait_for(ops_retention.prune(db, policy, None), 60)
        assert pruned["schedule_runs"] == 2 and pruned["schedules"] == 0
        assert await periods(db, live) == [held_period, latest]
        await tx.rollback()
    finally:
        await other.close()
    pruned = await ops_retention.prune(db, policy, None)
    assert pruned["schedule_runs"] == 1 and pruned["schedules"] == 1
    assert await periods(db, live) == [latest] and await db.schedules.get(gone) is None
