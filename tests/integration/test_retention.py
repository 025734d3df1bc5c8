"""Retention (issue 24, part 3): `bgworker clean` prunes what BGWORKER_RETENTION__* no
longer keeps, in bounded batches that skip (never wait for) rows others hold, counts it in
bgworker_pruned_total, and leaves everything younger, and every request still in progress,
alone. Real PostgreSQL, RabbitMQ and workers; the clock is the one thing faked (rows are
moved into the past, letters carry an old failed-at)."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import pytest

from bgworker import settings as settings_mod
from bgworker import storage, store
from bgworker.contract import retention
from bgworker.messaging import broker, topology, wire
from bgworker.ops import cleanup
from bgworker.ops import retention as ops_retention
from bgworker.ops.deadletters import queue
from tests.helpers import AMQP_URL, Publish, StartWorker, wait_for_status, wait_until
from tests.integration.letters import Cli

pytestmark = pytest.mark.usefixtures("amqp")

DAY = timedelta(days=1)


async def age(db: store.Store, request_id: uuid.UUID, days: float) -> None:
    """Move a finished request, its effects and records ``days`` into the past."""
    shift = timedelta(days=days)
    await db.pool.execute(
        "UPDATE bgworker_requests SET finished_at = finished_at - $2::interval, "
        "expires_at = expires_at - $2::interval WHERE id = $1",
        request_id,
        shift,
    )
    await db.pool.execute(
        "UPDATE bgworker_outbox SET done_at = done_at - $2::interval, "
        "created_at = created_at - $2::interval WHERE request_id = $1",
        request_id,
        shift,
    )


async def effects_done(db: store.Store) -> bool:
    pending = await db.pool.fetchval(
        "SELECT count(*) FROM bgworker_outbox WHERE status = 'pending'"
    )
    return not pending


async def dead_letter(channel: aio_pika.abc.AbstractChannel, ns: str, days_ago: float) -> str:
    """A letter that died ``days_ago`` (its failed-at header says so)."""
    request_id = str(uuid.uuid4())
    body = json.dumps({"id": request_id, "file_type": "blob"}).encode()
    letter = wire.DeadLetter("handler_error", "ValueError", "boom", 1)
    message = wire.dead_letter(body, letter, worker_id="w", message_id=request_id, routing_key=None)
    assert message.headers is not None
    message.headers[wire.FAILED_AT] = (datetime.now(UTC) - timedelta(days=days_ago)).isoformat()
    await broker.publish(channel, topology.Topology(ns).dead_exchange, "", message)
    return request_id


async def letter_ids(ns: str) -> set[str]:
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        q = await channel.get_queue(topology.Topology(ns).dead_queue, ensure=False)
        out = set()
        while (message := await q.get(no_ack=False, fail=False)) is not None:
            out.add(json.loads(message.body)["id"])
        return out
    finally:
        await connection.close()


async def made(db: store.Store, publish: Publish) -> dict[str, uuid.UUID]:
    """Ended requests aged 100, 40 and 1 days, and one of each that stays in progress."""
    ids = {}
    for name in ("old", "middle", "young"):
        event = await publish(
            "blob",
            {"size": 100, "secret": name},
            requester={"email": f"{name}@example.com", "id": name},
            description=f"report for {name}",
        )
        await wait_for_status(db, event.id, "ready")
        ids[name] = event.id
    await wait_until(lambda: effects_done(db))
    for name, days in (("old", 100.0), ("middle", 40.0), ("young", 1.0)):
        await age(db, ids[name], days)
    return ids


async def state(db: store.Store, request_id: uuid.UUID) -> dict[str, Any]:
    row = await db.requests.get_request(request_id)
    attempts = await db.requests.list_attempts(request_id)
    effects = await db.pool.fetchval(
        "SELECT count(*) FROM bgworker_outbox WHERE request_id = $1", request_id
    )
    return {"row": row, "attempts": len(attempts), "effects": effects}


async def test_clean_prunes_each_kind_after_its_period_and_nothing_younger(
    settings: settings_mod.Settings,
    db: store.Store,
    publish: Publish,
    start_worker: StartWorker,
    amqp: aio_pika.abc.AbstractChannel,
    tmp_path: Path,
) -> None:
    worker = await start_worker()
    ids = await made(db, publish)
    gate = tmp_path / "gate"
    running = await publish("gate", {"path": str(gate)}, requester={"email": "run@example.com"})
    await wait_for_status(db, running.id, "running")
    # An old finished_at on a request in progress (a replayed one): never pruned.
    await db.pool.execute(
        "UPDATE bgworker_requests SET finished_at = now() - interval '200 days' WHERE id = $1",
        running.id,
    )
    old_letter = await dead_letter(amqp, settings.namespace, 20)
    young_letter = await dead_letter(amqp, settings.namespace, 2)
    policy = retention.RetentionSettings(batch_size=2)  # the defaults, in small batches

    async with (
        storage.opened(settings) as files,
        queue.DeadLetterQueue(AMQP_URL, settings.namespace) as dlq,
    ):
        preview = await cleanup.clean(db, files, policy=policy, dlq=dlq, dry_run=True)
        assert (await state(db, ids["old"]))["row"] is not None  # a dry run changes nothing
        assert await letter_ids(settings.namespace) == {old_letter, young_letter}
        report = await cleanup.clean(db, files, policy=policy, dlq=dlq)
        still_running = await db.requests.get_request(running.id)
        gate.touch()
    assert preview.pruned == report.pruned
    assert report.pruned["rows"] == 1 and report.pruned["dead_letters"] == 1
    # The 100-day request was scrubbed too (the scrubs run first), then deleted.
    assert report.pruned["criteria"] == 2 and report.pruned["addresses"] == 2

    old = await state(db, ids["old"])
    assert old == {"row": None, "attempts": 0, "effects": 0}
    middle = await state(db, ids["middle"])
    row = middle["row"]
    assert row.requester_email is None and row.requester_id is None and row.scrubbed_at
    assert "criteria" not in row.event and "description" not in row.event
    assert "email" not in row.event["requester"] and row.event["file_type"] == "blob"
    assert middle["attempts"] == 0 and middle["effects"] == 0
    # The tenant was the requester's id (the default): it goes with the id.
    tenants = "SELECT tenant FROM bgworker_requests WHERE id = $1"
    assert await db.pool.fetchval(tenants, ids["middle"]) == ""
    assert await db.pool.fetchval(tenants, ids["young"]) == "young"
    young = await state(db, ids["young"])
    assert young["row"].requester_email == "young@example.com" and young["row"].event["criteria"]
    assert young["attempts"] == 1 and young["effects"] >= 2
    assert still_running is not None and still_running.requester_email == "run@example.com"
    assert await letter_ids(settings.namespace) == {young_letter}
    # A redelivery of the scrubbed request is a plain duplicate, not a conflicting one.
    again = await publish("blob", {"size": 100, "secret": "middle"}, id=ids["middle"])
    assert again.id == ids["middle"]
    await wait_until(lambda: worker.outcomes["duplicate"] == 1)
    assert await letter_ids(settings.namespace) == {young_letter}


async def test_a_row_someone_holds_is_skipped_not_waited_for(
    settings: settings_mod.Settings,
    db: store.Store,
    publish: Publish,
    start_worker: StartWorker,
    database_url: str,
) -> None:
    await start_worker()
    events = [await publish("blob", {"size": 10}) for _ in range(5)]
    for event in events:
        await wait_for_status(db, event.id, "ready")
        await age(db, event.id, 100)
    held = events[2].id
    other = await asyncpg.connect(database_url)
    try:
        tx = other.transaction()
        await tx.start()
        await other.execute("SELECT 1 FROM bgworker_requests WHERE id = $1 FOR UPDATE", held)
        policy = retention.RetentionSettings(batch_size=2)
        # Bounded only as a guard against a hang: a lock waited for would never return.
        pruned = await asyncio.wait_for(ops_retention.prune(db, policy, None), 60)
        assert pruned["rows"] == 4
        assert await db.requests.get_request(held) is not None
        await tx.rollback()
    finally:
        await other.close()
    assert (await ops_retention.prune(db, policy, None))["rows"] == 1
    assert await db.requests.get_request(held) is None


async def test_the_command_prunes_and_writes_its_metrics(
    settings: settings_mod.Settings,
    db: store.Store,
    publish: Publish,
    start_worker: StartWorker,
    cli: Cli,
    tmp_path: Path,
) -> None:
    await start_worker()
    event = await publish("blob", {"size": 10}, requester={"email": "m@example.com"})
    await wait_for_status(db, event.id, "ready")
    await wait_until(lambda: effects_done(db))
    await age(db, event.id, 45)
    metrics_file = tmp_path / "bgworker.prom"
    code, out, err = await cli(
        "clean", "--metrics-file", str(metrics_file), BGWORKER_RETENTION__ROWS_DAYS="60"
    )
    assert code == 0, err
    assert "addresses 1" in out and "rows 0" in out, out
    text = metrics_file.read_text()
    assert 'bgworker_pruned_total{kind="addresses"} 1.0' in text
    assert 'bgworker_pruned_total{kind="rows"} 0.0' in text
    for kind in (
        "bundle_addresses",
        "bundles",
        "schedule_runs",
        "schedules",
    ):  # issue 23's tables, too
        assert f"{kind} 0" in out and f'bgworker_pruned_total{{kind="{kind}"}} 0.0' in text
    code, out, err = await cli("clean", BGWORKER_RETENTION__ROWS_DAYS="30")
    assert code == 0 and "rows 1" in out, (out, err)
    assert await db.requests.get_request(event.id) is None
