"""Fair share, work-conserving (issue 21, worker/sharing.py): while every slot is busy the
parker drains the work queue into `parked`, and a freed slot claims the parked request of
the tenant with the fewest running directly, with no second delivery. A tenant alone uses
every slot; another tenant is served ahead of its backlog; nothing waiting is dead-lettered.
"""

from __future__ import annotations

import uuid
from typing import Any

import aio_pika
import pytest

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.messaging import broker
from tests.helpers import (
    DeadLetters,
    Publish,
    StartWorker,
    assert_never_handed_back,
    dead_queue_of,
    wait_for_status,
)
from tests.integration.test_fair_share import all_ready, max_overlap


@pytest.fixture(params=["quorum", "classic"])
def settings(settings: settings_mod.Settings, request: pytest.FixtureRequest) -> Any:
    settings.queue_type = request.param
    settings.fairness.share = True
    return settings


async def _started_order(db: store.Store, ids: list[uuid.UUID]) -> list[uuid.UUID]:
    rows = await db.pool.fetch(
        "SELECT id FROM bgworker_requests WHERE id = ANY($1) ORDER BY started_at, id", ids
    )
    return [r["id"] for r in rows]


async def test_a_second_tenant_is_served_ahead_of_the_first_tenants_backlog(
    db: store.Store,
    publish: Publish,
    start_worker: StartWorker,
    settings: settings_mod.Settings,
    amqp: aio_pika.abc.AbstractChannel,
) -> None:
    settings.worker.concurrency = 2
    # No cap set anywhere: fair share alone.
    w = await start_worker()
    backlog = [await publish("slow", {"seconds": 0.3}, tenant="a") for _ in range(16)]
    others = [await publish("slow", {"seconds": 0.3}, tenant="b") for _ in range(3)]
    everything = [e.id for e in [*backlog, *others]]
    await all_ready(db, everything, timeout=90)
    order = await _started_order(db, everything)
    ranks = [order.index(e.id) for e in others]
    # FIFO would start b's three last (ranks 16-18). Served as slots free, ahead of a's
    # backlog: the three are all in before a's last eight.
    assert max(ranks) < len(backlog) - 8 + len(others), ranks
    attempts = await db.pool.fetch(
        "SELECT attempts FROM bgworker_requests WHERE id = ANY($1)", everything
    )
    assert all(r["attempts"] == 1 for r in attempts)
    # Parked and claimed straight from PostgreSQL: fewer deliveries reached a job slot
    # than requests ran, none came back, nothing was dead-lettered for waiting.
    assert w.outcomes["parked"] > 0
    assert w.intake is not None
    assert w.intake.counts["taken"] < len(everything)
    assert_never_handed_back(w.intake, settings.queue_type)
    assert await broker.queue_depth(amqp, dead_queue_of(settings)) == 0
    parked = await db.pool.fetchval(
        "SELECT count(*) FROM bgworker_requests WHERE status = 'parked'"
    )
    assert parked == 0


async def test_a_tenant_alone_uses_every_slot(
    db: store.Store,
    publish: Publish,
    start_worker: StartWorker,
    settings: settings_mod.Settings,
) -> None:
    """Work-conserving: with no other tenant waiting, the parked backlog of one fills
    every slot, as it would without fair share."""
    settings.worker.concurrency = 3
    w = await start_worker()
    evs = [await publish("slow", {"seconds": 1}, tenant="alone") for _ in range(12)]
    await all_ready(db, [e.id for e in evs], timeout=90)
    assert w.outcomes["parked"] > 0
    assert w.intake is not None and w.intake.counts["taken"] < len(evs)
    assert await max_overlap(db, "tenant", "alone") == 3


async def test_hard_caps_still_hold_under_fair_share(
    db: store.Store,
    publish: Publish,
    start_worker: StartWorker,
    settings: settings_mod.Settings,
) -> None:
    """Directly claimed requests count against the hard caps like any claim: the capped
    tenant never runs more than its cap, the other takes the slots it leaves, and the
    file type's cap holds whatever the tenant."""
    settings.worker.concurrency = 3
    settings.fairness.tenant_limits = {"capped": 1}
    settings.fairness.file_type_limits = {"blob": 1}
    await start_worker()
    await start_worker()
    capped = [await publish("slow", {"seconds": 0.4}, tenant="capped") for _ in range(8)]
    free = [await publish("slow", {"seconds": 0.4}, tenant="free") for _ in range(8)]
    blobs = [await publish("blob", {"size": 10, "seed": i}, tenant="free") for i in range(4)]
    await all_ready(db, [e.id for e in [*capped, *free, *blobs]], timeout=120)
    assert await max_overlap(db, "tenant", "capped") == 1
    assert await max_overlap(db, "file_type", "blob") == 1
    assert await max_overlap(db, "tenant", "free") >= 2


async def test_off_keeps_the_fifo_order(
    db: store.Store,
    publish: Publish,
    start_worker: StartWorker,
    settings: settings_mod.Settings,
) -> None:
    """BGWORKER_FAIRNESS__SHARE=false: nothing is parked, the work queue's order holds."""
    settings.worker.concurrency = 2
    settings.fairness.share = False
    w = await start_worker()
    backlog = [await publish("slow", {"seconds": 0.2}, tenant="a") for _ in range(8)]
    others = [await publish("slow", {"seconds": 0.2}, tenant="b") for _ in range(2)]
    everything = [e.id for e in [*backlog, *others]]
    await all_ready(db, everything, timeout=60)
    order = await _started_order(db, everything)
    assert sorted(order.index(e.id) for e in others) == [8, 9]
    assert w.outcomes["parked"] == 0


async def test_an_idle_worker_claims_what_a_busy_workers_parker_parked(
    db: store.Store,
    publish: Publish,
    start_worker: StartWorker,
    settings: settings_mod.Settings,
) -> None:
    """Parked rows are anyone's: a worker with an idle slot finds them (its poll) and runs
    them, with no delivery and no hand-back."""
    settings.worker.concurrency = 1
    settings.worker.drain_timeout_seconds = 0.5  # teardown: release the 20 s job at once
    busy = await start_worker(worker_id="busy")
    slow = await publish("slow", {"seconds": 20})
    await wait_for_status(db, slow.id, "running", timeout=10)
    instant = await publish("blob", {"size": 10})
    # The busy worker's one slot is taken: its parker parks the delivery.
    await wait_for_status(db, instant.id, "parked", timeout=10)
    idle = await start_worker(worker_id="idle")
    row = await wait_for_status(db, instant.id, "ready", timeout=15)
    assert row.attempts == 1
    assert [a["worker"] for a in await db.requests.list_attempts(instant.id)] == ["idle"]
    assert idle.intake is not None and busy.intake is not None
    assert idle.intake.counts["taken"] == 0  # claimed from PostgreSQL: no delivery
    assert busy.intake.counts["returned"] == 0
    slow_row = await db.requests.get_request(slow.id)
    assert slow_row is not None and slow_row.status == "running"


async def test_another_body_under_a_parked_id_is_a_conflicting_duplicate(
    db: store.Store,
    publish: Publish,
    start_worker: StartWorker,
    settings: settings_mod.Settings,
    amqp: aio_pika.abc.AbstractChannel,
) -> None:
    """Hostile input past the parker's batched parks: a different body published under the
    id of a parked request is not taken for it (handed back, then dead-lettered by its
    claim); the parked request runs with its own body, once."""
    settings.worker.concurrency = 1
    await start_worker()
    holder = await publish("slow", {"seconds": 1.5}, tenant="a")
    await wait_for_status(db, holder.id, "running", timeout=10)
    parked = await publish("blob", {"size": 10, "seed": 1}, tenant="a")
    await wait_for_status(db, parked.id, "parked", timeout=10)
    await publish("blob", {"size": 99, "seed": 2}, tenant="a", id=parked.id)
    letters = DeadLetters(amqp, settings.namespace, settings.queue_type)
    [letter] = await letters.wait_for(1)
    assert letter.headers is not None
    assert letter.headers["x-bgworker-reason"] == "conflicting_duplicate"
    await all_ready(db, [holder.id, parked.id], timeout=30)
    row = await db.requests.get_request(parked.id)
    assert row is not None and row.attempts == 1
    assert row.event["criteria"] == {"size": 10, "seed": 1}
