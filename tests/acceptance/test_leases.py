"""Leases held by real worker processes (guarantee 13): a live worker keeps them whatever
its handlers do to the event loop; a worker cut off from PostgreSQL loses them. Killed
workers losing theirs: test_kill9.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from bgworker import settings as settings_mod
from bgworker import store
from tests import tcp_proxy
from tests.acceptance.processes import Spawn
from tests.helpers import Publish, get_row, wait_for_status, wait_until

pytestmark = pytest.mark.slow

LEASE = "3"


async def test_async_handler_blocking_the_loop_past_the_lease_keeps_it(
    db: store.Store, publish: Publish, spawn: Spawn
) -> None:
    # Issue 18, finding 4: an async handler blocks its worker's event loop in time.sleep for
    # 8 s, almost three leases of 3 s, while a second worker's reaper looks for expired
    # leases every second. The lease is renewed from the worker's lease thread, so the
    # request is built once, by the first worker, in one attempt.
    env = {"BGWORKER_WORKER__LEASE_SECONDS": LEASE}
    first = await spawn("worker", env=env)
    event = await publish("block_loop", {"seconds": 8})
    running = await wait_for_status(db, event.id, "running")
    assert running.lease_owner is not None and f":{first.pid}:" in running.lease_owner
    await spawn("worker", env=env)

    ready = await wait_for_status(db, event.id, {"ready", "failed"}, timeout=60)
    assert ready.status == "ready", ready
    assert ready.attempts == 1
    [attempt] = await db.requests.list_attempts(event.id)
    assert attempt["outcome"] == "ready" and f":{first.pid}:" in attempt["worker"]
    # The watchdog still names the handler that blocked the loop.
    await first.wait_for_log(r"event loop was blocked for [0-9.]+ s by handler 'block_loop'")


async def test_a_worker_cut_off_from_postgresql_loses_its_lease(
    settings: settings_mod.Settings, db: store.Store, publish: Publish, spawn: Spawn, tmp_path: Path
) -> None:
    # The other half of guarantee 13: the first worker reaches PostgreSQL through a proxy,
    # which then lets nothing through either way (a partition: no reset, no answer). Its lease
    # thread cannot renew, the lease runs out, the second worker takes the request over and
    # builds it; when the partition heals, the first worker's outcome is fenced off.
    gate = tmp_path / "gate"
    url = settings.database_url.get_secret_value()
    async with tcp_proxy.proxy_to(url) as proxy:
        env = {"BGWORKER_WORKER__LEASE_SECONDS": LEASE}
        # One slot, which the job fills: a worker cut off from PostgreSQL would otherwise
        # take the request's next delivery too and hold it while it cannot claim it.
        cut_env = {"BGWORKER_DATABASE_URL": proxy.url(url), "BGWORKER_WORKER__CONCURRENCY": "1"}
        cut_off = await spawn("worker", env={**env, **cut_env})
        event = await publish("gate", {"path": str(gate)})
        first = await wait_for_status(db, event.id, "running")
        assert first.lease_owner is not None and f":{cut_off.pid}:" in first.lease_owner
        proxy.mode = tcp_proxy.Mode.HOLD
        other = await spawn("worker", env=env)

        async def taken_over() -> bool:
            row = await get_row(db, event.id)
            return row.attempts == 2 and f":{other.pid}:" in (row.lease_owner or "")

        await wait_until(taken_over, timeout=60)
        gate.touch()
        ready = await wait_for_status(db, event.id, "ready", timeout=60)
        proxy.mode = tcp_proxy.Mode.FORWARD  # healed: what waited goes through
        await cut_off.wait_for_log(rf"request {event.id}: lease lost", timeout=60)
    attempts = await db.requests.list_attempts(event.id)
    assert [a["attempt"] for a in attempts] == [1, 2]
    assert f":{other.pid}:" in attempts[1]["worker"] and attempts[1]["outcome"] == "ready"
    assert await get_row(db, event.id) == ready  # the fenced-off worker changed nothing
