"""The parker (issue 21, worker/parking.py): a backlog of over-cap deliveries is parked
while every job slot is busy, in batches, without a job slot; a delivery that fits its caps
is handed back to a job slot, and another tenant's request starts before the backlog does.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from bgworker import settings as settings_mod
from bgworker import store
from tests.helpers import (
    Publish,
    StartWorker,
    assert_never_handed_back,
    wait_for_status,
    wait_until,
)


@pytest.fixture(params=["quorum", "classic"])
def settings(settings: settings_mod.Settings, request: pytest.FixtureRequest) -> Any:
    settings.queue_type = request.param
    return settings


async def _count(db: store.Store, ids: list[uuid.UUID], status: str) -> int:
    return int(
        await db.pool.fetchval(
            "SELECT count(*) FROM bgworker_requests WHERE id = ANY($1) AND status = $2",
            ids,
            status,
        )
    )


async def test_a_backlog_is_parked_while_every_slot_is_busy(
    db: store.Store,
    publish: Publish,
    start_worker: StartWorker,
    settings: settings_mod.Settings,
) -> None:
    settings.worker.concurrency = 3
    settings.fairness.tenant_in_flight = 2
    w = await start_worker()
    # Two of tenant big run (long); the third is parked by the free slot's claim, which
    # opens the parker.
    running = [await publish("slow", {"seconds": 4}, tenant="big") for _ in range(2)]
    first = await publish("slow", {"seconds": 0.05}, tenant="big")
    await wait_for_status(db, first.id, "parked")
    # The last slot taken by another tenant: no job slot is free from here on.
    other = await publish("slow", {"seconds": 4}, tenant="other")
    await wait_for_status(db, other.id, "running")
    backlog = [await publish("slow", {"seconds": 0.05}, tenant="big") for _ in range(30)]
    small = await publish("slow", {"seconds": 0.05}, tenant="small")
    backlog_ids = [e.id for e in backlog]

    async def all_parked() -> bool:
        return await _count(db, backlog_ids, "parked") == len(backlog)

    await wait_until(all_parked, timeout=30)
    # Parked while the three slots were busy: none of their jobs had ended.
    long_ids = [e.id for e in [*running, other]]
    assert await _count(db, long_ids, "running") == 3
    # `small` fits its caps: handed back to the queue, not parked, and waiting for a slot.
    row = await db.requests.get_request(small.id)
    assert row is None or row.status == "queued"

    everything = [e.id for e in [*running, first, other, *backlog, small]]

    async def all_ready() -> bool:
        return await _count(db, everything, "ready") == len(everything)

    await wait_until(all_ready, timeout=90)
    times = {
        r["id"]: r
        for r in await db.pool.fetch(
            "SELECT id, started_at, attempts FROM bgworker_requests WHERE id = ANY($1)",
            everything,
        )
    }
    # The other tenant's request started before any of the parked backlog.
    assert times[small.id]["started_at"] < min(times[i]["started_at"] for i in backlog_ids)
    assert all(r["attempts"] == 1 for r in times.values())
    assert_never_handed_back(w.intake, settings.queue_type)
