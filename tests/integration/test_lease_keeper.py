"""The lease keeper (store.leases) against a real PostgreSQL: it renews what its worker
holds, under the same fence as every outcome, and nothing once stopped."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from bgworker import store
from bgworker.contract import events
from tests.helpers import event_body, get_row, wait_until

LEASE = 1.5  # renewed every 0.5 s
WORKER = "keeper-test:1:abcdef"


@pytest.fixture
async def keeper(database_url: str) -> AsyncIterator[store.LeaseKeeper]:
    async with store.LeaseKeeper(database_url, WORKER, LEASE) as kept:
        yield kept


async def _claim(db: store.Store, worker: str = WORKER) -> store.Claim:
    event = events.FileRequested.model_validate(event_body())
    claim = await db.requests.record_and_claim(event, 3, worker, LEASE)
    assert claim is not None
    return claim


async def _renewed(db: store.Store, claim: store.Claim, times: int) -> None:
    """Wait until the lease expiry has moved ``times`` times."""
    seen = {(await get_row(db, claim.request_id)).lease_expires_at}

    async def moved() -> bool:
        seen.add((await get_row(db, claim.request_id)).lease_expires_at)
        return len(seen) > times

    await wait_until(moved, timeout=30)


async def test_held_leases_are_renewed_and_dropped_ones_are_not(
    db: store.Store, keeper: store.LeaseKeeper
) -> None:
    held, dropped = await _claim(db), await _claim(db)
    lost: list[store.Claim] = []
    keeper.hold(held, lambda: lost.append(held))
    keeper.hold(dropped, lambda: lost.append(dropped))
    keeper.drop(dropped)
    before = await get_row(db, dropped.request_id)
    await _renewed(db, held, 3)
    # The dropped one ran out: renewed never, reported lost never.
    assert (await get_row(db, dropped.request_id)).lease_expires_at == before.lease_expires_at
    assert lost == []


@pytest.mark.parametrize("how", ["cancel", "takeover", "owner"])
async def test_a_lease_gone_is_reported_once_and_not_renewed(
    db: store.Store, keeper: store.LeaseKeeper, how: str
) -> None:
    claim, witness = await _claim(db), await _claim(db)
    lost = asyncio.Event()
    calls: list[int] = []

    def on_lost() -> None:
        calls.append(1)
        lost.set()

    keeper.hold(claim, on_lost)
    keeper.hold(witness, lambda: None)  # still held after: the rounds go on
    await _renewed(db, claim, 1)
    if how == "cancel":
        assert await db.requests.request_cancel(claim.request_id) == "running"
    elif how == "takeover":  # the lease expired meanwhile and another attempt claimed it
        await db.pool.execute(
            "UPDATE bgworker_requests SET lease_token = gen_random_uuid() WHERE id = $1",
            claim.request_id,
        )
    else:  # same token, another owner: the fence names both
        await db.pool.execute(
            "UPDATE bgworker_requests SET lease_owner = 'someone-else' WHERE id = $1",
            claim.request_id,
        )
    expiry = (await get_row(db, claim.request_id)).lease_expires_at
    await asyncio.wait_for(lost.wait(), 30)
    await _renewed(db, witness, 2)
    assert calls == [1]
    assert (await get_row(db, claim.request_id)).lease_expires_at == expiry


async def test_a_stopped_keeper_renews_nothing(database_url: str, db: store.Store) -> None:
    keeper = store.LeaseKeeper(database_url, WORKER, LEASE)
    keeper.start()
    try:
        claim = await _claim(db)
        keeper.hold(claim, lambda: None)
        await _renewed(db, claim, 1)
    finally:
        await keeper.stop()
    expiry = (await get_row(db, claim.request_id)).lease_expires_at
    assert expiry is not None

    async def expired() -> bool:
        return bool(await db.pool.fetchval("SELECT now() > $1", expiry))

    await wait_until(expired, timeout=30)
    assert (await get_row(db, claim.request_id)).lease_expires_at == expiry
    with contextlib.suppress(Exception):
        await keeper.stop()  # a second stop is harmless


async def test_a_lease_past_its_bound_is_let_go_once(
    db: store.Store, keeper: store.LeaseKeeper, caplog: pytest.LogCaptureFixture
) -> None:
    # A handler past its time limit plus a lease can only be running on a loop still
    # blocked (the limit fires on the loop): its worker is as good as stopped.
    bounded, witness = await _claim(db), await _claim(db)
    lost: list[store.Claim] = []
    keeper.hold(bounded, lambda: lost.append(bounded))
    keeper.hold(witness, lambda: None)
    keeper.bound(bounded, 0.0)
    keeper.bound(witness, None)
    expiry = (await get_row(db, bounded.request_id)).lease_expires_at
    await _renewed(db, witness, 3)
    assert (await get_row(db, bounded.request_id)).lease_expires_at == expiry
    assert lost == []  # let go, not lost: the job hears of it from its fenced outcome
    said = [r for r in caplog.records if "past its time limit" in r.getMessage()]
    assert len(said) == 1 and str(bounded.request_id) in said[0].getMessage()
