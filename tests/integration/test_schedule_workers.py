"""Three real worker processes and a schedule: the one holding the schedule's lease is
killed with SIGKILL; no period is ever published twice, and the next period is published
by a survivor once the dead worker's lease expired (issue 23).

Every FileRequested that reaches the requests exchange is copied to a queue of the test's
own (bound next to the work queue), so "published twice" is observed on the broker, not
inferred from the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import aio_pika
import pytest

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.contract import schedules as contract
from bgworker.messaging import topology
from tests.helpers import REPO, settings_env, wait_for_status, wait_until

pytestmark = pytest.mark.asyncio


async def test_kill_9_of_the_holder_never_double_publishes_and_the_next_period_comes(
    db: store.Store, settings: settings_mod.Settings, amqp: aio_pika.abc.AbstractChannel
) -> None:
    published: list[str] = []
    topo = topology.Topology(settings.namespace)
    copies = await amqp.declare_queue(f"{settings.namespace}.test-requested", exclusive=True)
    await copies.bind(topo.requests_exchange, topology.REQUESTED_KEY)

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        published.append(json.loads(message.body)["id"])
        await message.ack()

    await copies.consume(on_message)

    request = contract.ScheduleRequested.model_validate(
        {
            "id": str(uuid.uuid4()),
            "cron": "* * * * *",  # every minute: the next period comes within a minute
            "request": {"file_type": "blob", "criteria": {"size": 10, "seed": 1}},
        }
    )
    assert await db.schedules.create(request, datetime.now(UTC))

    env = {**settings_env(settings), "BGWORKER_LOG_LEVEL": "WARNING"}
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bgworker",
            "worker",
            cwd=REPO,
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        for _ in range(3)
    ]
    try:
        # Due now: the current minute is the first period.
        await db.pool.execute(
            "UPDATE bgworker_schedules SET next_run_at = date_trunc('minute', now()) WHERE id = $1",
            request.id,
        )
        await wait_until(lambda: _runs(db, request.id, 1), timeout=60)
        [first] = await db.pool.fetch(
            "SELECT period FROM bgworker_schedule_runs WHERE schedule_id = $1", request.id
        )
        await wait_for_status(db, contract.period_id(request.id, first["period"]), "ready")
        holder = await db.pool.fetchval(
            "SELECT lease_owner FROM bgworker_schedules WHERE id = $1", request.id
        )
        pid = int(holder.rsplit(":", 2)[1])
        victim = next(p for p in procs if p.pid == pid)
        victim.send_signal(signal.SIGKILL)
        assert await victim.wait() == -signal.SIGKILL

        # The next period, by a survivor (after the dead one's lease expired).
        await wait_until(lambda: _runs(db, request.id, 2), timeout=120)
        rows = await db.pool.fetch(
            "SELECT period, request_id FROM bgworker_schedule_runs WHERE schedule_id = $1 "
            "ORDER BY period",
            request.id,
        )
        second = rows[1]
        assert second["period"] == first["period"] + timedelta(minutes=1)
        await wait_for_status(db, second["request_id"], "ready", timeout=60)
        new_holder = await db.pool.fetchval(
            "SELECT lease_owner FROM bgworker_schedules WHERE id = $1", request.id
        )
        assert new_holder is not None and new_holder != holder
        await wait_until(lambda: len(published) >= 2)
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 30)
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    # Each period once on the broker, and each its own request.
    counts = Counter(published)
    assert counts and set(counts.values()) == {1}, counts
    periods = await db.pool.fetch(
        "SELECT request_id FROM bgworker_schedule_runs WHERE schedule_id = $1", request.id
    )
    assert {str(r["request_id"]) for r in periods} == set(counts)


async def _runs(db: store.Store, schedule_id: uuid.UUID, n: int) -> bool:
    count = await db.pool.fetchval(
        "SELECT count(*) FROM bgworker_schedule_runs WHERE schedule_id = $1 "
        "AND published_at IS NOT NULL",
        schedule_id,
    )
    return bool(count >= n)
