"""Workers killed with SIGKILL while holding jobs: nothing lost, nothing duplicated."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from pathlib import Path

import aio_pika
import pytest

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.cli.smtp_sink import SmtpSink
from bgworker.messaging import publisher, topology
from tests.acceptance.workers import WorkerProcs, make_requests, verify_all_ready
from tests.helpers import AMQP_URL, settings_env, wait_until

REQUESTS = 200
WORKERS = 3
KILLS = 8


@pytest.mark.slow
async def test_kill9_workers_repeatedly_during_a_run(
    settings: settings_mod.Settings,
    db: store.Store,
    amqp: aio_pika.abc.AbstractChannel,
    smtp_sink: SmtpSink,
    tmp_path: Path,
) -> None:
    settings.worker.concurrency = 4
    ready_events: Counter[str] = Counter()
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel()
    events_queue = await channel.declare_queue(f"{settings.namespace}.kill9-events", exclusive=True)
    await events_queue.bind(topology.Topology(settings.namespace).events_exchange, "file.ready")

    ready_ids: Counter[str] = Counter()

    async def on_ready(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        ready_events[message.message_id or ""] += 1
        ready_ids[json.loads(message.body)["id"]] += 1
        await message.ack()

    await events_queue.consume(on_ready)
    procs = WorkerProcs(settings_env(settings), tmp_path)
    for _ in range(WORKERS):
        procs.start()
    requests = make_requests(REQUESTS, rows=3000)
    async with publisher.Publisher(AMQP_URL, namespace=settings.namespace) as pub:
        for event in requests:
            await pub.publish(event)

    in_flight_at_kill: list[int] = []
    rng = random.Random(9)
    try:
        while procs.killed < KILLS:
            await asyncio.sleep(rng.uniform(0.8, 1.6))
            counts = await db.maintenance.count_by_status()
            if counts.get("ready", 0) >= REQUESTS:
                break
            in_flight_at_kill.append(counts.get("running", 0))
            procs.kill(rng.choice(procs.alive))
            procs.start()

        async def all_ready() -> bool:
            return (await db.maintenance.count_by_status()).get("ready", 0) == REQUESTS

        await wait_until(all_ready, timeout=240)
        await smtp_sink.wait_for(REQUESTS, timeout=120)

        async def outbox_settled() -> bool:
            rows = await db.pool.fetchval(
                "SELECT count(*) FROM bgworker_outbox WHERE status = 'done'"
            )
            return bool(rows == 2 * REQUESTS)

        await wait_until(outbox_settled, timeout=120)
        await wait_until(lambda: len(ready_events) == REQUESTS, timeout=60)
    except TimeoutError:
        pytest.fail(f"run did not settle: {await db.maintenance.count_by_status()}\n{procs.logs()}")
    finally:
        codes = procs.stop_all()
        await connection.close()

    report = await verify_all_ready(db, settings.storage_dir, requests)
    emails = Counter(m["To"] for m in smtp_sink.messages)
    message_ids: dict[str, set[str]] = {m["To"]: set() for m in smtp_sink.messages}
    for m in smtp_sink.messages:
        message_ids[m["To"]].add(m["Message-ID"])
    extra_emails = sum(emails.values()) - len(emails)
    extra_events = sum(ready_events.values()) - len(ready_events)
    print(
        f"\nkill -9 run: {REQUESTS} requests, {WORKERS} workers, {procs.killed} kills, "
        f"running jobs at each kill {in_flight_at_kill}, {report}, "
        f"emails {sum(emails.values())} ({extra_emails} re-sent), "
        f"FileReady {sum(ready_events.values())} ({extra_events} re-published)"
    )
    assert procs.killed >= 3, "the run finished before enough kills: make it longer"
    # Nothing lost: every requester got an email, every request one FileReady message id.
    assert set(emails) == {f"user{i}@example.com" for i in range(REQUESTS)}
    assert set(ready_ids) == {str(e.id) for e in requests}
    # Exactly one email per request once copies are collapsed by Message-ID: a copy exists
    # only when a worker was killed between the SMTP server's "250 accepted" and the commit
    # that records it (SMTP has no way to ask "did you already take this?"). Every copy has
    # the same Message-ID, and there is at most one per kill and effect in flight.
    assert all(len(ids) == 1 for ids in message_ids.values()), message_ids
    assert set(ready_events) == {f"{e.id}.file.ready" for e in requests}
    assert extra_emails + extra_events <= procs.killed * 2 * settings.worker.concurrency
    # Workers that were not killed stopped cleanly on SIGTERM.
    assert [c for c in codes if c != -9] == [0] * (len(codes) - procs.killed)
