"""Fair share with worker processes: a tenant's cap holds across two workers, and a worker
killed with -9 while holding the tenant's slots leaks none of them (issue 21)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import aio_pika
import pytest

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.contract import events
from bgworker.messaging import publisher
from tests.acceptance.workers import WorkerProcs
from tests.helpers import AMQP_URL, settings_env, wait_until
from tests.integration.test_fair_share import all_ready, max_overlap


@pytest.mark.parametrize("share", [False, True], ids=["caps", "caps+share"])
async def test_a_kill9_leaks_no_slot_and_the_cap_holds(
    settings: settings_mod.Settings,
    db: store.Store,
    amqp: aio_pika.abc.AbstractChannel,
    tmp_path: Path,
    share: bool,
) -> None:
    settings.worker.concurrency = 4
    settings.fairness.tenant_in_flight = 2
    settings.fairness.share = share  # the cap holds with fair share too
    procs = WorkerProcs(settings_env(settings), tmp_path)
    procs.start()
    procs.start()
    requests = [
        events.FileRequested(
            id=uuid.uuid4(), file_type="slow", criteria={"seconds": 1.5}, tenant="a"
        )
        for _ in range(8)
    ]
    try:
        async with publisher.Publisher(AMQP_URL, namespace=settings.namespace) as pub:
            for event in requests:
                await pub.publish(event)

        async def two_running() -> bool:
            return bool(
                await db.pool.fetchval(
                    "SELECT count(*) FROM bgworker_requests WHERE status = 'running'"
                )
                == 2
            )

        await wait_until(two_running, timeout=30)
        # Kill a worker that holds one of the tenant's two slots: its lease (5 s) must
        # expire and free the slot, or the parked requests would wait forever on one slot.
        owner = await db.pool.fetchval(
            "SELECT lease_owner FROM bgworker_requests WHERE status = 'running' LIMIT 1"
        )
        pid = int(owner.split(":")[1])
        victim = next(p for p in procs.alive if p.pid == pid)
        procs.kill(victim)
        procs.start()  # back to two workers
        await all_ready(db, [e.id for e in requests], timeout=120)
        assert await max_overlap(db, "tenant", "a") <= 2
        lost = await db.pool.fetchval(
            "SELECT count(*) FROM bgworker_attempts WHERE outcome = 'lost'"
        )
        assert lost >= 1  # the killed worker's job was lost and ran again
        parked = await db.pool.fetchval(
            "SELECT count(*) FROM bgworker_requests WHERE status = 'parked'"
        )
        assert parked == 0
    finally:
        codes = await asyncio.to_thread(procs.stop_all)
        assert all(c == 0 for c in codes if c >= 0), procs.logs()


async def test_a_directly_claimed_request_whose_worker_is_killed_finishes_once(
    settings: settings_mod.Settings,
    db: store.Store,
    amqp: aio_pika.abc.AbstractChannel,
    tmp_path: Path,
) -> None:
    """Fair share: a parked request claimed by a freed slot (no message) whose worker is
    killed with -9 is put back by the lease expiry and the reaper, like any claim, and
    ends ready once."""
    settings.worker.concurrency = 1
    settings.fairness.share = True
    procs = WorkerProcs(settings_env(settings), tmp_path)
    victim = procs.start()
    first = events.FileRequested(
        id=uuid.uuid4(), file_type="slow", criteria={"seconds": 3}, tenant="a"
    )
    parked = events.FileRequested(
        id=uuid.uuid4(), file_type="slow", criteria={"seconds": 4}, tenant="a"
    )
    try:
        async with publisher.Publisher(AMQP_URL, namespace=settings.namespace) as pub:
            await pub.publish(first)

            async def status_is(request_id: uuid.UUID, status: str) -> bool:
                return bool(
                    await db.pool.fetchval(
                        "SELECT status = $2 FROM bgworker_requests WHERE id = $1",
                        request_id,
                        status,
                    )
                )

            await wait_until(lambda: status_is(first.id, "running"), timeout=30)
            # The one slot is busy: the parker takes the next delivery and parks it ...
            await pub.publish(parked)
        await wait_until(lambda: status_is(parked.id, "parked"), timeout=30)
        # ... and the slot that frees claims it from PostgreSQL, with no message.
        await wait_until(lambda: status_is(parked.id, "running"), timeout=30)
        procs.kill(victim)
        procs.start()
        await all_ready(db, [first.id, parked.id], timeout=120)
        outcomes = await db.pool.fetch(
            "SELECT outcome FROM bgworker_attempts WHERE request_id = $1 ORDER BY attempt",
            parked.id,
        )
        # The killed attempt was lost, the next one made the file: one ready, no more.
        assert [r["outcome"] for r in outcomes] == ["lost", "ready"]
        row = await db.requests.get_request(parked.id)
        assert row is not None and row.attempts == 2
    finally:
        codes = await asyncio.to_thread(procs.stop_all)
        assert all(c == 0 for c in codes if c >= 0), procs.logs()
