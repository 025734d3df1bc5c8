"""SIGTERM on a `bgworker worker` process: drain, release, or (twice) exit at once; the job is
never lost either way."""

from __future__ import annotations

import signal

from bgworker import store
from tests.acceptance.processes import Spawn
from tests.helpers import Publish, wait_for_status


async def test_sigterm_lets_the_running_job_finish_and_exits_0(
    db: store.Store, publish: Publish, spawn: Spawn
) -> None:
    worker = await spawn("worker")
    event = await publish("slow", {"seconds": 3})
    await wait_for_status(db, event.id, "running")

    worker.signal(signal.SIGTERM)
    assert await worker.wait_exit(timeout=60) == 0, worker.log()

    row = await db.requests.get_request(event.id)
    assert row is not None
    assert row.status == "ready", worker.log()
    assert row.attempts == 1
    assert "draining 1 job(s)" in worker.log()


async def test_drain_timeout_releases_the_job_to_the_next_worker(
    db: store.Store, publish: Publish, spawn: Spawn
) -> None:
    first = await spawn("worker", env={"BGWORKER_WORKER__DRAIN_TIMEOUT_SECONDS": "0.5"})
    event = await publish("slow", {"seconds": 5})
    await wait_for_status(db, event.id, "running")

    first.signal(signal.SIGTERM)
    assert await first.wait_exit(timeout=60) == 0, first.log()
    assert "releasing 1 job(s)" in first.log()

    # Handed back: queued again, the interrupted attempt not counted, no lease held.
    row = await db.requests.get_request(event.id)
    assert row is not None
    assert row.status == "queued", first.log()
    assert row.attempts == 0
    assert row.lease_owner is None
    assert await db.requests.list_attempts(event.id) == []

    second = await spawn("worker")
    row = await wait_for_status(db, event.id, {"ready", "failed"}, timeout=60)
    assert row.status == "ready", second.log()
    assert row.attempts == 1


async def test_second_sigterm_exits_at_once_and_the_lease_brings_the_job_back(
    db: store.Store, publish: Publish, spawn: Spawn
) -> None:
    # Test settings: lease 5 s, reaper every 1 s, drain up to 10 s (longer than we wait).
    first = await spawn("worker")
    event = await publish("slow", {"seconds": 4})
    running = await wait_for_status(db, event.id, "running")
    assert running.lease_owner is not None

    first.signal(signal.SIGTERM)
    await first.wait_for_log("draining 1 job")
    first.signal(signal.SIGTERM)
    # Bounded wait, not a timing: the drain alone would take ~4 s more, the job is unfinished.
    code = await first.wait_exit(timeout=3)
    assert code != 0, first.log()
    assert "second signal, exiting now" in first.log()
    row = await db.requests.get_request(event.id)
    assert row is not None
    assert row.status == "running"  # left behind with a lease nobody renews

    second = await spawn("worker")
    row = await wait_for_status(db, event.id, {"ready", "failed"}, timeout=60)
    assert row.status == "ready", second.log()
    assert row.attempts == 2
    attempts = await db.requests.list_attempts(event.id)
    assert [a["outcome"] for a in attempts] == ["lost", "ready"]
    assert attempts[0]["worker"] == running.lease_owner
