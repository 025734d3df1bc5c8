"""Fair share with worker processes: a tenant's cap holds across two workers, and a worker
killed with -9 while holding the tenant's slots leaks none of them (issue 21)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import aio_pika

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.contract import events
from bgworker.messaging import publisher
from tests.acceptance.workers import WorkerProcs
from tests.helpers import AMQP_URL, settings_env, wait_until
from tests.integration.test_fair_share import all_ready, max_overlap


async def test_a_kill9_leaks_no_slot_and_the_cap_holds(
    settings: settings_mod.Settings,
    db: store.Store,
    amqp: aio_pika.abc.AbstractChannel,
    tmp_path: Path,
) -> None:
    settings.worker.concurrency = 4
    settings.fairness.tenant_in_flight = 2
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
