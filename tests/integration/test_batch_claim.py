"""Claims in batches (issue 22), with real RabbitMQ and PostgreSQL: a worker process killed
(SIGKILL) while it holds a batch of claimed requests; each of them ends exactly once, run
again by another worker once its lease expired."""

from __future__ import annotations

import asyncio
import collections
import signal
import sys
import uuid

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.worker import intake
from tests.helpers import REPO, Publish, StartWorker, settings_env, wait_for_status, wait_until

SLOTS = 16  # one consumer of prefetch 8: batches of up to eight claims


async def _running(db: store.Store, ids: list[uuid.UUID]) -> list[str]:
    rows = [await db.requests.get_request(i) for i in ids]
    return [r.lease_owner or "" for r in rows if r is not None and r.status == "running"]


async def test_a_worker_killed_holding_a_claimed_batch_leaves_each_request_to_end_once(
    db: store.Store,
    publish: Publish,
    start_worker: StartWorker,
    settings: settings_mod.Settings,
) -> None:
    assert intake.prefetch_for(SLOTS, None) > 1
    env = {
        **settings_env(settings),
        "BGWORKER_LOG_LEVEL": "WARNING",
        "BGWORKER_WORKER__CONCURRENCY": str(SLOTS),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bgworker",
        "worker",
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        events = [await publish("slow_first", {"seconds": 600}) for _ in range(8)]
        ids = [e.id for e in events]

        async def all_running() -> bool:
            return len(await _running(db, ids)) == len(ids)

        await wait_until(all_running, timeout=60)
        [killed] = set(await _running(db, ids))
        # Claimed together: rows claimed in one transaction share its now().
        firsts = [(await db.requests.list_attempts(i))[0] for i in ids]
        together = collections.Counter(a["started_at"] for a in firsts)
        assert max(together.values()) > 1, together
        proc.send_signal(signal.SIGKILL)
        assert await proc.wait() == -signal.SIGKILL
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    # Another worker: the reaper requeues each request once its lease (5 s) expired.
    await start_worker()
    for request_id in ids:
        row = await wait_for_status(db, request_id, "ready", timeout=60)
        assert row.attempts == 2
        attempts = await db.requests.list_attempts(request_id)
        assert [a["attempt"] for a in attempts] == [1, 2]
        assert attempts[0]["worker"] == killed and attempts[0]["outcome"] == "lost"
        assert attempts[1]["worker"] != killed and attempts[1]["outcome"] == "ready"
    # Ended once: one FileReady each in the outbox, done; nothing runs any more.
    for request_id in ids:
        effects = await db.pool.fetch(
            "SELECT status FROM bgworker_outbox WHERE request_id = $1 AND kind = 'event_ready'",
            request_id,
        )
        assert [e["status"] for e in effects] == ["done"]
    assert await _running(db, ids) == []


async def test_a_batch_claimed_together_is_acked_together(
    db: store.Store,
    publish: Publish,
    start_worker: StartWorker,
    settings: settings_mod.Settings,
) -> None:
    """A deep queue: deliveries come in batches of ``p``, are claimed together, and their
    acks go out as one ``basic.ack multiple`` (``worker.acking``); every delivery is acked
    once (a second ack of a tag would close the channel and bring the batch back)."""
    settings.worker.concurrency = SLOTS
    events = [await publish("blob", {"size": 10, "seed": i}) for i in range(48)]
    w = await start_worker()
    for e in events:
        row = await wait_for_status(db, e.id, "ready", timeout=60)
        assert row.attempts == 1
    assert w.intake is not None
    counts = w.intake.counts
    assert counts["acks multiple"] >= 1, counts
    assert counts["acks covered"] + counts["acks single"] == counts["taken"] == len(events)
    assert counts["returned"] == 0
