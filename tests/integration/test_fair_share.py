"""Fair share (issue 21): caps per tenant and per file type hold across workers; a request
over its cap is parked in PostgreSQL (no slot, no delivery, no lease) and runs once woken,
never dead-lettered for waiting; a parked request whose waker is gone is woken by the sweep.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import pytest

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.contract import events
from bgworker.messaging import broker
from tests.helpers import (
    Publish,
    StartWorker,
    assert_never_handed_back,
    dead_queue_of,
    wait_for_status,
    wait_until,
)


@pytest.fixture(params=["quorum", "classic"])
def settings(settings: settings_mod.Settings, request: pytest.FixtureRequest) -> Any:
    settings.queue_type = request.param
    return settings


async def max_overlap(db: store.Store, column: str, value: str) -> int:
    """Most attempts of requests with ``column = value`` that ran at once, from their
    attempts' times (a claim starts after the commit that freed its slot, so an attempt that
    started when another finished did not overlap it). Lost attempts (a worker killed) end
    when the reaper notices, after their lease expired: left out."""
    assert column in {"tenant", "file_type"}
    spans = await db.pool.fetch(
        f"""SELECT a.started_at, a.finished_at FROM bgworker_attempts a
            JOIN bgworker_requests r ON r.id = a.request_id
            WHERE r.{column} = $1 AND a.outcome IS DISTINCT FROM 'lost'""",
        value,
    )
    edges = sorted(
        [(s["started_at"], 1) for s in spans]
        + [(s["finished_at"] or datetime.max.replace(tzinfo=UTC), -1) for s in spans],
        key=lambda e: (e[0], e[1]),  # an end before a start at the same instant
    )
    best = current = 0
    for _, step in edges:
        current += step
        best = max(best, current)
    return best


async def all_ready(db: store.Store, ids: list[uuid.UUID], timeout: float = 60) -> None:
    async def done() -> bool:
        n = await db.pool.fetchval(
            "SELECT count(*) FROM bgworker_requests WHERE id = ANY($1) AND status = 'ready'", ids
        )
        return bool(n == len(ids))

    await wait_until(done, timeout=timeout)


async def test_tenant_cap_holds_across_two_workers_and_others_do_not_wait(
    db: store.Store,
    publish: Publish,
    start_worker: StartWorker,
    settings: settings_mod.Settings,
    amqp: aio_pika.abc.AbstractChannel,
) -> None:
    settings.fairness.tenant_in_flight = 2
    settings.fairness.tenant_limits = {"vip": 3}
    first = await start_worker(worker_id="w1")
    second = await start_worker(worker_id="w2")
    big = [await publish("slow", {"seconds": 0.6}, tenant="big") for _ in range(10)]
    # No tenant: the requester's id is the tenant.
    small = [
        await publish("slow", {"seconds": 0.6}, requester=events.Requester(id="small"))
        for _ in range(2)
    ]
    vip = [await publish("slow", {"seconds": 0.6}, tenant="vip") for _ in range(6)]
    await all_ready(db, [e.id for e in big + small + vip])

    assert await max_overlap(db, "tenant", "big") == 2
    assert await max_overlap(db, "tenant", "vip") == 3
    assert await max_overlap(db, "tenant", "small") <= 2
    # Each ran once; parked requests were acked, never handed back or redelivered.
    for e in big + small + vip:
        row = await db.requests.get_request(e.id)
        assert row is not None and row.attempts == 1
    for w in (first, second):
        assert_never_handed_back(w.intake, settings.queue_type)
    assert await broker.queue_depth(amqp, dead_queue_of(settings)) == 0
    assert first.outcomes["parked"] + second.outcomes["parked"] > 0
    # `small` published after all of `big` finished before `big`'s last started.
    small_done = max(await _times(db, small, "finished_at"))
    big_last_start = max(await _times(db, big, "started_at"))
    assert small_done < big_last_start


async def _times(db: store.Store, evs: list[events.FileRequested], column: str) -> list[Any]:
    """``column`` of each request, in the order of ``evs``."""
    assert column in {"started_at", "finished_at", "received_at"}
    found = {
        r["id"]: r[column]
        for r in await db.pool.fetch(
            f"SELECT id, {column} FROM bgworker_requests WHERE id = ANY($1)", [e.id for e in evs]
        )
    }
    return [found[e.id] for e in evs]


async def test_file_type_cap_holds_across_workers_whatever_the_tenant(
    db: store.Store,
    publish: Publish,
    start_worker: StartWorker,
    settings: settings_mod.Settings,
) -> None:
    settings.fairness.file_type_limits = {"slow": 1}
    await start_worker(worker_id="w1")
    await start_worker(worker_id="w2")
    slow = [await publish("slow", {"seconds": 0.3}, tenant=f"t{i}") for i in range(5)]
    quick = [await publish("blob", {"size": 10, "seed": i}, tenant="t0") for i in range(4)]
    await all_ready(db, [e.id for e in slow + quick])
    assert await max_overlap(db, "file_type", "slow") == 1
    # Another file type was not held back by it: all quick ones were done before the last
    # slow one started.
    assert max(await _times(db, quick, "finished_at")) < max(await _times(db, slow, "started_at"))


async def test_a_parked_request_is_never_dead_lettered_for_waiting(
    db: store.Store,
    publish: Publish,
    start_worker: StartWorker,
    settings: settings_mod.Settings,
    amqp: aio_pika.abc.AbstractChannel,
) -> None:
    """More parks and wakes than a quorum queue's delivery limit (20) allows redeliveries:
    each park acks its delivery and each wake publishes a new message."""
    settings.fairness.tenant_in_flight = 1
    w = await start_worker()
    # The tenant's one slot is held while the rest arrive: every one of them is parked.
    holder = await publish("slow", {"seconds": 3}, tenant="one")
    await wait_for_status(db, holder.id, "running", timeout=10)
    evs = [await publish("blob", {"size": 10, "seed": i}, tenant="one") for i in range(30)]
    await all_ready(db, [holder.id, *(e.id for e in evs)])
    assert w.outcomes["parked"] >= 25
    assert await max_overlap(db, "tenant", "one") == 1
    # Woken in the order they were parked (one slot: one at a time).
    received = await _times(db, evs, "received_at")
    started = await _times(db, evs, "started_at")
    in_parking_order = [s for _, s in sorted(zip(received, started, strict=True))]
    assert in_parking_order == sorted(started)
    dead = await broker.queue_depth(amqp, dead_queue_of(settings))
    assert dead == 0
    assert_never_handed_back(w.intake, settings.queue_type)


async def test_a_parked_request_whose_waker_died_is_woken_by_the_sweep(
    db: store.Store, start_worker: StartWorker, settings: settings_mod.Settings
) -> None:
    """A worker that dies holding the tenant's only slot: its lease expires (the slot is
    free again, nothing leaks) and the sweep wakes the request parked behind it."""
    settings.fairness.tenant_in_flight = 1
    ghost, parked = (
        events.FileRequested(id=uuid.uuid4(), file_type="blob", criteria={"size": 5}, tenant="t")
        for _ in range(2)
    )
    claim = await db.fairness.claim_capped(ghost, 4, "ghost", 1.0, settings.fairness)
    assert isinstance(claim, store.Claim)
    assert isinstance(
        await db.fairness.claim_capped(parked, 4, "ghost", 1.0, settings.fairness), store.Parked
    )
    row = await db.requests.get_request(parked.id)
    assert row is not None and row.status == "parked" and row.attempts == 0
    assert row.lease_token is None
    # No message for either exists: the worker finds both from PostgreSQL alone.
    await start_worker()
    await all_ready(db, [ghost.id, parked.id], timeout=30)


async def test_a_parked_request_can_be_cancelled(
    db: store.Store, settings: settings_mod.Settings
) -> None:
    settings.fairness.tenant_in_flight = 1
    a, b = (
        events.FileRequested(id=uuid.uuid4(), file_type="blob", criteria={}, tenant="t")
        for _ in range(2)
    )
    assert isinstance(await db.fairness.claim_capped(a, 4, "w", 30, settings.fairness), store.Claim)
    assert isinstance(
        await db.fairness.claim_capped(b, 4, "w", 30, settings.fairness), store.Parked
    )
    assert await db.requests.request_cancel(b.id) == "cancelled"
    # A wake passes it by; the counts show it no longer.
    woken = await db.fairness.wake(settings.fairness, 30, _never, tenant=None)
    assert woken == []
    counts = await db.fairness.tenant_counts("t")
    assert [(c.in_flight, c.parked) for c in counts] == [(1, 0)]


async def test_a_producers_cancel_and_an_erasure_reach_a_parked_request(
    db: store.Store, settings: settings_mod.Settings
) -> None:
    """CancelRequested / DELETE /requests/{id} (``cancel_or_placeholder``) and ``forget``
    end a parked request too: it must never be woken, built, or left parked and empty."""
    settings.fairness.tenant_in_flight = 1
    a, b, c = (
        events.FileRequested(
            id=uuid.uuid4(), file_type="blob", criteria={}, tenant="t", requester={"id": "p"}
        )
        for _ in range(3)
    )
    assert isinstance(await db.fairness.claim_capped(a, 4, "w", 30, settings.fairness), store.Claim)
    for parked in (b, c):
        assert isinstance(
            await db.fairness.claim_capped(parked, 4, "w", 30, settings.fairness), store.Parked
        )
    cancelled = await db.requests.cancel_or_placeholder(b.id)
    assert cancelled.status == "cancelled" and cancelled.changed
    await db.erasure.erase(store.erasure.Subject.tenant("t"))
    row = await db.requests.get_request(c.id)
    assert row is not None and row.status == "cancelled"
    assert await db.fairness.wake(settings.fairness, 30, _never, tenant=None) == []


async def _never(event: dict[str, Any]) -> None:
    raise AssertionError(f"woke {event['id']}")


async def test_a_claim_over_the_cap_counts_only_live_leases(
    db: store.Store, settings: settings_mod.Settings
) -> None:
    """The slot of a worker killed with -9 is free once its lease expired, before any reaper
    ran: the count is of live leases."""
    settings.fairness.tenant_in_flight = 1
    a, b = (
        events.FileRequested(id=uuid.uuid4(), file_type="blob", criteria={}, tenant="t")
        for _ in range(2)
    )
    assert isinstance(
        await db.fairness.claim_capped(a, 4, "dead", 30, settings.fairness), store.Claim
    )
    assert isinstance(
        await db.fairness.claim_capped(b, 4, "w", 30, settings.fairness), store.Parked
    )
    await db.pool.execute(
        "UPDATE bgworker_requests SET lease_expires_at = $2 WHERE id = $1",
        a.id,
        datetime.now(UTC) - timedelta(seconds=1),
    )
    again = await db.fairness.claim_capped(b, 4, "w", 30, settings.fairness)
    assert isinstance(again, store.Claim) and again.attempt == 1


async def test_an_expired_lease_over_the_cap_is_left_to_the_reaper(
    db: store.Store, settings: settings_mod.Settings
) -> None:
    """A redelivery of a request whose worker died, while its tenant's slots are taken:
    not parked (its lost attempt would stay open), left running-and-expired for the reaper,
    which closes the attempt and requeues it."""
    settings.fairness.tenant_in_flight = 1
    lost, busy = (
        events.FileRequested(id=uuid.uuid4(), file_type="blob", criteria={}, tenant="t")
        for _ in range(2)
    )
    limits = settings.fairness
    assert isinstance(await db.fairness.claim_capped(lost, 4, "dead", 30, limits), store.Claim)
    await db.pool.execute(
        "UPDATE bgworker_requests SET lease_expires_at = now() - interval '1 second' WHERE id = $1",
        lost.id,
    )
    assert isinstance(await db.fairness.claim_capped(busy, 4, "w", 30, limits), store.Claim)
    assert await db.fairness.claim_capped(lost, 4, "w", 30, limits) is None
    row = await db.requests.get_request(lost.id)
    assert row is not None and row.status == "running" and row.attempts == 1
