"""Fewer round trips per job (issue 11), against a real PostgreSQL: effects come back with
the request's link generation (no query per link); ``mark_ready`` and ``outbox_done`` calls
that overlap share one transaction or statement (group commit), each fenced on its own
lease token and told its own outcome."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import uuid
from datetime import datetime
from typing import Any

import asyncpg
import pytest

from bgworker import store
from bgworker.contract import events
from bgworker.effects import outcomes
from tests.helpers import list_outbox, wait_until

# A ready request's effects, no deployment webhook.
READY = functools.partial(outcomes.ready_effects, webhook_url=None)


async def _claimed(db: store.Store, email: str | None = "a@example.com") -> store.Claim:
    event = events.FileRequested(
        id=uuid.uuid4(),
        file_type="blob",
        criteria={},
        filename="x.bin",
        requester={"id": "u1", "email": email} if email else None,
    )
    claim = await db.requests.record_and_claim(event, 3, "test-worker", 60)
    assert claim is not None
    return claim


async def _ready(db: store.Store, claim: store.Claim) -> store.RequestRow:
    row = await db.ready.mark_ready(claim, size=3, sha256="0" * 64, storage_key="k", effects=READY)
    assert row is not None
    return row


async def test_effects_carry_the_link_generation_of_their_commit(database_url: str) -> None:
    """Handed-off effects and swept ones both carry the generation current when they were
    claimed: a revoke before the claim is in the link, as when it was queried."""
    announced: list[store.OutboxItem] = []
    pool = await store.create_pool(database_url)
    try:
        db = store.Store(pool, claim_effects_seconds=30, on_effects=announced.extend)
        claim = await _claimed(db)
        assert await db.links.revoke_links(claim.request_id) == 1
        await _ready(db, claim)
        assert {i.kind for i in announced} == {"event_ready", "email_ready"}
        assert {i.link_generation for i in announced} == {1}

        # Left to the sweep (no hand-off), revoked again before the sweep claims them.
        sweeping = store.Store(pool)
        other = await _claimed(sweeping)
        await _ready(sweeping, other)
        assert await sweeping.links.revoke_links(other.request_id) == 1
        assert await sweeping.links.revoke_links(other.request_id) == 2
        due = await sweeping.outbox.claim_outbox_due(10, 30)
        assert {(i.request_id, i.link_generation) for i in due} == {(other.request_id, 2)}
    finally:
        await pool.close()


async def test_overlapping_done_calls_share_one_statement(db: store.Store) -> None:
    """Eight effects finishing together: one statement carries them all; every row is
    done, and the requests whose email went are marked notified."""
    claims = [await _claimed(db) for _ in range(4)]
    for claim in claims:
        await _ready(db, claim)
    items = await db.outbox.claim_outbox_due(50, 30)
    assert len(items) == 8
    group = db.outbox.done_group
    await asyncio.gather(*(db.outbox.outbox_done(item) for item in items))
    assert (group.flushes, group.calls) == (1, 8)
    for claim in claims:
        rows = await list_outbox(db, claim.request_id)
        assert {r["status"] for r in rows} == {"done"}
        row = await db.requests.get_request(claim.request_id)
        assert row is not None and row.notified_at is not None


async def test_jobs_finishing_together_share_one_transaction(db: store.Store) -> None:
    """Five jobs finish at once, one of them no longer ours (its lease token is stale): one
    transaction carries them; the four still ours are ready with their own effects, the
    stale one gets None and writes nothing."""
    claims = [await _claimed(db, email=None if i % 2 else f"u{i}@example.com") for i in range(4)]
    stale = await _claimed(db)
    stale = dataclasses.replace(stale, lease_token=uuid.uuid4())
    group = db.ready.group
    rows = await asyncio.gather(
        *(
            db.ready.mark_ready(c, size=i, sha256=f"{i}" * 64, storage_key=f"k{i}", effects=READY)
            for i, c in enumerate([*claims, stale])
        )
    )
    assert (group.flushes, group.calls) == (1, 5)
    assert rows[4] is None
    assert await list_outbox(db, stale.request_id) == []
    for i, (claim, row) in enumerate(zip(claims, rows, strict=False)):
        assert row is not None and row.id == claim.request_id
        assert (row.status, row.size_bytes, row.storage_key) == ("ready", i, f"k{i}")
        kinds = {r["kind"] for r in await list_outbox(db, claim.request_id)}
        assert kinds == ({"event_ready"} if i % 2 else {"event_ready", "email_ready"})
        attempts = await db.requests.list_attempts(claim.request_id)
        assert [a["outcome"] for a in attempts] == ["ready"]


async def test_effects_built_ahead_are_those_of_the_recorded_row(
    db: store.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the job path (the claim read the row) the effects are built before the outcome is
    recorded and written by mark_ready's own statement; without the row they are built from
    the updated row after it. Both give the same rows: the times in the first are those the
    statement recorded, not the placeholders they were built with."""
    separate: list[int] = []
    insert = db.outbox.insert_effects_of

    async def counted(
        conn: asyncpg.Connection, items: list[tuple[uuid.UUID, str, Any]]
    ) -> list[store.OutboxItem]:
        separate.append(len(items))
        return await insert(conn, items)

    monkeypatch.setattr(db.outbox, "insert_effects_of", counted)
    ahead_claim = await _claimed(db)
    assert ahead_claim.row is not None
    ahead = await _ready(db, ahead_claim)
    assert separate == []  # one statement wrote the row and its effects
    after_claim = dataclasses.replace(await _claimed(db), row=None)
    after = await _ready(db, after_claim)
    assert separate == [2]

    def times(payload: dict[str, object]) -> tuple[datetime, datetime]:
        return (
            datetime.fromisoformat(str(payload["ready_at"])),
            datetime.fromisoformat(str(payload["expires_at"])),
        )

    built: dict[uuid.UUID, dict[str, dict[str, object]]] = {}
    for claim, row in ((ahead_claim, ahead), (after_claim, after)):
        outbox = {r["kind"]: r["payload"] for r in await list_outbox(db, claim.request_id)}
        assert set(outbox) == {"event_ready", "email_ready"}
        for payload in outbox.values():
            assert times(payload) == (row.finished_at, row.expires_at)
        built[claim.request_id] = {
            k: {f: v for f, v in p.items() if f not in ("ready_at", "expires_at")}
            for k, p in outbox.items()
        }
    assert built[ahead_claim.request_id] == built[after_claim.request_id]


async def test_a_group_with_effects_built_after_commits_as_one(
    db: store.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job whose effects were built ahead and one whose effects are built after (a claim
    without its row, as a bundle's part's) finish together: one flush and one transaction
    carry both, each with its own effects."""
    separate: list[int] = []
    insert = db.outbox.insert_effects_of

    async def counted(
        conn: asyncpg.Connection, items: list[tuple[uuid.UUID, str, Any]]
    ) -> list[store.OutboxItem]:
        assert conn.is_in_transaction()
        separate.append(len(items))
        return await insert(conn, items)

    monkeypatch.setattr(db.outbox, "insert_effects_of", counted)
    ahead = await _claimed(db)
    after = dataclasses.replace(await _claimed(db, email=None), row=None)
    rows = await asyncio.gather(*(_ready(db, c) for c in (ahead, after)))
    assert (db.ready.group.flushes, db.ready.group.calls) == (1, 2)
    assert separate == [1]  # only the one built after: its FileReady
    assert [r.status for r in rows] == ["ready", "ready"]
    assert {r["kind"] for r in await list_outbox(db, ahead.request_id)} == {
        "event_ready",
        "email_ready",
    }
    assert {r["kind"] for r in await list_outbox(db, after.request_id)} == {"event_ready"}


async def test_a_failed_statement_fails_every_caller_it_carried(database_url: str) -> None:
    pool = await store.create_pool(database_url)
    db = store.Store(pool)
    claims = [await _claimed(db) for _ in range(3)]
    await pool.close()
    results = await asyncio.gather(
        *(
            db.ready.mark_ready(c, size=1, sha256="0" * 64, storage_key="k", effects=READY)
            for c in claims
        ),
        return_exceptions=True,
    )
    assert all(isinstance(r, asyncpg.InterfaceError) for r in results), results
    assert db.ready.group.flushes == 0


async def test_a_cancelled_caller_leaves_the_statement_to_the_others(db: store.Store) -> None:
    """The caller whose call started the flush is cancelled (a job cancelled at shutdown):
    the flush runs on in its own task, and every call it carries is recorded."""
    claims = [await _claimed(db) for _ in range(3)]
    for claim in claims:
        await _ready(db, claim)
    items = await db.outbox.claim_outbox_due(50, 30)
    first = asyncio.create_task(db.outbox.outbox_done(items[0]))
    await asyncio.sleep(0)  # its flush has started
    others = [asyncio.create_task(db.outbox.outbox_done(item)) for item in items[1:]]
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    async with asyncio.timeout(10):
        await asyncio.gather(*others)
    await wait_until(lambda: db.outbox.done_group.calls == len(items))
    statuses = [r["status"] for c in claims for r in await list_outbox(db, c.request_id)]
    assert statuses == ["done"] * len(items)


async def test_finalize_statements_are_planned_once(database_url: str) -> None:
    """The statements of a job's finish keep one generic plan per connection instead of
    being planned again on every call (with array parameters PostgreSQL made a custom plan
    every time, which cost more CPU than running them)."""
    pool = await store.create_pool(database_url, min_size=1, max_size=1)  # one session
    try:
        # A table of some size: on a near-empty one the generic plan of the array form
        # looked cheap enough, and the test would not see the re-planning.
        await pool.execute(
            "INSERT INTO bgworker_requests (id, file_type, status, event, filename, content_type,"
            " requested_at, attempts) SELECT gen_random_uuid(), 'blob', 'ready', '{}', 'x', 'x',"
            " now(), 1 FROM generate_series(1, 5000)"
        )
        await pool.execute("ANALYZE bgworker_requests")
        announced: list[store.OutboxItem] = []
        db = store.Store(pool, claim_effects_seconds=30, on_effects=announced.extend)
        for _ in range(12):  # PostgreSQL weighs a generic plan after five custom ones
            await _ready(db, await _claimed(db, email=None))
            await db.outbox.outbox_done(announced.pop())
        plans = {
            r["statement"].split("\n")[0]: (r["generic_plans"], r["custom_plans"])
            for r in await pool.fetch(
                "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements"
            )
        }
        finishing = {
            name: next(v for k, v in plans.items() if store.Q[name].startswith(k))
            # On the job path mark_ready writes the outbox rows itself (no insert_outbox).
            for name in ("mark_ready", "outbox_done")
        }
        for name, (generic, custom) in finishing.items():
            assert custom <= 5 and generic >= 7, (name, generic, custom)
    finally:
        await pool.close()
