"""Dedupe survives SIGKILL: a worker killed while one request builds and an identical one
waits for it loses neither; the next worker builds once and both end ready."""

from __future__ import annotations

import uuid
from pathlib import Path

import aio_pika
import pytest

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.contract import events
from bgworker.messaging import publisher
from tests import dedupe_handlers
from tests.acceptance.workers import WorkerProcs
from tests.helpers import AMQP_URL, StartWorker, get_row, settings_env, wait_for_status, wait_until


@pytest.mark.slow
async def test_kill9_of_the_builder_and_its_waiter_loses_neither(
    settings: settings_mod.Settings,
    db: store.Store,
    amqp: aio_pika.abc.AbstractChannel,
    start_worker: StartWorker,
    tmp_path: Path,
) -> None:
    settings.handlers.append("tests.dedupe_handlers:registry")
    procs = WorkerProcs(settings_env(settings), tmp_path)
    victim = procs.start()
    run, gate = uuid.uuid4().hex, tmp_path / "gate"
    criteria = {"run": run, "rows": 100, "gate": str(gate)}
    requester = {"id": "alice"}
    try:
        async with publisher.Publisher(AMQP_URL, namespace=settings.namespace) as pub:
            leader = await publish_one(pub, criteria, requester)

            async def leading() -> bool:
                row = await db.requests.get_request(leader.id)
                return row is not None and row.fingerprint is not None

            await wait_until(leading)  # building in the subprocess, held at the gate
            waiter = await publish_one(pub, criteria, requester)
            await wait_for_status(db, waiter.id, "running")  # claimed there, waiting
        assert (await get_row(db, waiter.id)).fingerprint is None  # a waiter does not lead
        procs.kill(victim)
        gate.touch()
        await start_worker()  # its reaper requeues both expired leases
        rows = [await wait_for_status(db, e.id, "ready", timeout=60) for e in (leader, waiter)]
    finally:
        procs.stop_all()
    assert dedupe_handlers.CALLS[run] == 1  # one build, in this process
    [built] = [r for r in rows if r.reused_from is None]
    assert [r.reused_from for r in rows if r is not built] == [built.id]
    assert {r.storage_key for r in rows} == {built.storage_key}


async def publish_one(
    pub: publisher.Publisher, criteria: dict[str, object], requester: dict[str, str]
) -> events.FileRequested:
    event = events.FileRequested(
        id=uuid.uuid4(), file_type="report", criteria=criteria, requester=requester
    )
    await pub.publish(event)
    return event
