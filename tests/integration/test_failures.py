"""Retries with backoff, dead letters, leases, cancellation, SMTP outages, batch mode."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections import Counter

import aio_pika
import pytest

from bgworker import handlers, store, worker
from bgworker import settings as settings_mod
from bgworker.cli.smtp_sink import SmtpSink
from tests.helpers import (
    EventLog,
    Publish,
    StartWorker,
    consume_all,
    dead_queue_of,
    get_row,
    insert_request,
    list_outbox,
    stored_keys,
    text_header,
    unfinished_writes,
    wait_for_status,
    wait_until,
)


async def test_flaky_handler_is_retried_with_backoff_until_ready(
    db: store.Store, publish: Publish, start_worker: StartWorker, settings: settings_mod.Settings
) -> None:
    await start_worker()
    event = await publish("flaky", {"fail_times": 2})
    row = await wait_for_status(db, event.id, "ready")
    assert row.attempts == 3

    attempts = await db.requests.list_attempts(event.id)
    assert [a["outcome"] for a in attempts] == ["retrying", "retrying", "ready"]
    assert [a["error_class"] for a in attempts] == ["RuntimeError", "RuntimeError", None]
    assert "attempt 1" in attempts[0]["error"]
    # Each retry waited at least its tier's delay (0.2 s, then 0.4 s) in a delay queue.
    for earlier, later, delay in zip(
        attempts, attempts[1:], settings.worker.retry_delays_seconds, strict=False
    ):
        assert earlier["next_run_at"] is not None
        waited = (later["started_at"] - earlier["finished_at"]).total_seconds()
        assert waited >= delay * 0.9, (waited, delay)


@pytest.mark.both_storages
async def test_always_failing_handler_is_dead_lettered_and_others_continue(
    db: store.Store,
    publish: Publish,
    start_worker: StartWorker,
    settings: settings_mod.Settings,
    smtp_sink: SmtpSink,
    event_log: EventLog,
) -> None:
    await start_worker()
    bad = await publish("always_fails", {}, requester={"email": "carol@example.com"})
    good = await publish("blob", {"size": 2048})
    good_row = await wait_for_status(db, good.id, "ready")
    assert good_row.attempts == 1

    row = await wait_for_status(db, bad.id, "failed")
    assert row.attempts == 3  # the handler's own max_attempts
    assert row.failure_reason == "max_attempts"
    assert row.last_error_class == "RuntimeError"
    assert row.storage_key is None

    await wait_until(lambda: any(k == "file.failed" for k, _ in event_log))
    [failed] = [b for k, b in event_log if k == "file.failed"]
    assert failed["id"] == str(bad.id) and failed["attempts"] == 3
    [mail] = await smtp_sink.wait_for(1, timeout=30)
    assert mail["To"] == "carol@example.com"
    assert "could not be created" in mail["Subject"]

    letters = await consume_all(dead_queue_of(settings))
    assert len(letters) == 1
    headers = letters[0].headers
    assert headers["x-bgworker-reason"] == "max_attempts"
    assert headers["x-bgworker-error-class"] == "RuntimeError"
    assert headers["x-bgworker-attempts"] == 3
    assert "always fails" in text_header(headers, "x-bgworker-error")
    assert "Traceback" in text_header(headers, "x-bgworker-traceback")
    assert letters[0].message_id == str(bad.id)
    # Only the good request's file exists: partial bytes of failed attempts never appear.
    assert await stored_keys(settings) == [good_row.storage_key]
    assert await unfinished_writes(settings) == []


async def test_permanent_error_skips_retries(
    db: store.Store, publish: Publish, start_worker: StartWorker, settings: settings_mod.Settings
) -> None:
    await start_worker()
    event = await publish("permanent", {})
    row = await wait_for_status(db, event.id, "failed")
    assert row.attempts == 1
    assert row.failure_reason == "permanent_error"
    [letter] = await consume_all(dead_queue_of(settings))
    assert letter.headers["x-bgworker-reason"] == "permanent_error"


def _unacked(queue: str) -> int:
    out = subprocess.run(
        [
            "rabbitmqctl",
            "list_queues",
            "-q",
            "--no-table-headers",
            "name",
            "messages_unacknowledged",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    for line in out.splitlines():
        name, _, count = line.partition("\t")
        if name == queue:
            return int(count)
    raise AssertionError(f"queue {queue} not listed")


async def test_job_longer_than_its_lease_completes_once(
    db: store.Store, publish: Publish, start_worker: StartWorker, settings: settings_mod.Settings
) -> None:
    # The lease (1 s) is far shorter than the job (4 s): only the heartbeat keeps it.
    settings.worker.lease_seconds = 1.0
    await start_worker()
    await start_worker()  # a second worker whose reaper would steal an unrenewed lease
    event = await publish("slow", {"seconds": 4})
    # Read while running (rabbitmqctl below can take seconds on a busy machine).
    running = await wait_for_status(db, event.id, "running")
    # Acked at claim: the broker's consumer timeout cannot cut a long job short.
    assert await asyncio.to_thread(_unacked, f"{settings.namespace}.work") == 0
    row = await wait_for_status(db, event.id, "ready", timeout=60)
    assert row.attempts == 1
    assert [a["outcome"] for a in await db.requests.list_attempts(event.id)] == ["ready"]
    assert running.lease_expires_at is not None
    assert len(await stored_keys(settings)) == 1


async def test_smtp_outage_delays_email_but_sends_each_once(
    db: store.Store, publish: Publish, start_worker: StartWorker, smtp_sink: SmtpSink
) -> None:
    await smtp_sink.stop()
    await start_worker()
    sent = [
        await publish("blob", {"size": 100, "seed": i}, requester={"email": f"user{i}@example.com"})
        for i in range(5)
    ]
    for event in sent:
        assert (await wait_for_status(db, event.id, "ready")).status == "ready"

    async def all_failed_once() -> bool:
        rows = [o for e in sent for o in await list_outbox(db, e.id) if o["kind"] == "email_ready"]
        return len(rows) == 5 and all(o["attempts"] >= 1 and o["last_error"] for o in rows)

    await wait_until(all_failed_once)
    for event in sent:  # files stay ready while SMTP is down
        assert (await get_row(db, event.id)).status == "ready"
    await smtp_sink.start()
    await smtp_sink.wait_for(5, timeout=30)

    async def all_done() -> bool:
        rows = [o for e in sent for o in await list_outbox(db, e.id) if o["kind"] == "email_ready"]
        return all(o["status"] == "done" for o in rows)

    await wait_until(all_done)
    recipients = Counter(m["To"] for m in smtp_sink.messages)
    assert recipients == Counter(f"user{i}@example.com" for i in range(5))


@pytest.mark.both_storages
async def test_cancel_running_request_stops_it_without_file_or_email(
    db: store.Store,
    publish: Publish,
    start_worker: StartWorker,
    settings: settings_mod.Settings,
    smtp_sink: SmtpSink,
    event_log: EventLog,
) -> None:
    w = await start_worker()
    event = await publish("slow", {"seconds": 30}, requester={"email": "dan@example.com"})
    await wait_for_status(db, event.id, "running")
    assert await db.requests.request_cancel(event.id) == "running"
    row = await wait_for_status(db, event.id, "cancelled", timeout=20)
    assert row.storage_key is None
    await wait_until(lambda: w.outcomes["cancelled"] == 1)
    assert await stored_keys(settings) == [] and await unfinished_writes(settings) == []
    assert smtp_sink.messages == [] and event_log == []


async def test_cancel_queued_request_is_never_run(
    db: store.Store, publish: Publish, start_worker: StartWorker, settings: settings_mod.Settings
) -> None:
    event = await publish("blob", {"size": 10})
    await insert_request(db, event, max_attempts=4)
    assert await db.requests.request_cancel(event.id) == "cancelled"
    w = await start_worker()
    await wait_until(lambda: w.outcomes["duplicate"] == 1)
    row = await get_row(db, event.id)
    assert row.status == "cancelled" and row.attempts == 0
    assert await stored_keys(settings) == []
    # Cancelling twice is refused: it is no longer cancellable.
    assert await db.requests.request_cancel(event.id) is None


@pytest.mark.parametrize("limit", ["max_jobs", "burst"])
async def test_batch_mode_exits_by_itself(
    db: store.Store,
    publish: Publish,
    settings: settings_mod.Settings,
    amqp: aio_pika.abc.AbstractChannel,
    limit: str,
) -> None:
    events = [await publish("blob", {"size": 10, "seed": i}) for i in range(5)]
    limits = worker.Limits(max_jobs=3) if limit == "max_jobs" else worker.Limits(burst=True)
    w = worker.Worker(settings, handlers.load(settings.handlers), limits=limits)
    outcomes = await asyncio.wait_for(w.run(), timeout=60)
    statuses: Counter[str] = Counter()
    for event in events:
        row = await db.requests.get_request(event.id)
        statuses[row.status if row else "unseen"] += 1
    if limit == "max_jobs":
        assert outcomes["ready"] >= 3
        assert statuses["ready"] >= 3
    else:
        assert outcomes["ready"] == 5 and statuses["ready"] == 5


async def test_graceful_stop_releases_unfinished_jobs(
    db: store.Store, publish: Publish, start_worker: StartWorker, settings: settings_mod.Settings
) -> None:
    settings.worker.drain_timeout_seconds = 0.3
    w = await start_worker()
    event = await publish("slow", {"seconds": 30})
    await wait_for_status(db, event.id, "running")
    w.stop()
    row = await wait_for_status(db, event.id, "queued", timeout=20)
    assert row.lease_owner is None and row.attempts == 0
    # The released job is back on the queue: another worker picks it up.
    settings.worker.drain_timeout_seconds = 10
    w2 = await start_worker(worker_id=f"second-{uuid.uuid4().hex[:4]}")
    row = await wait_for_status(db, event.id, "running", timeout=20)
    assert row.lease_owner == w2.worker_id


async def test_stop_during_a_job_sends_its_email_before_exiting(
    db: store.Store,
    publish: Publish,
    settings: settings_mod.Settings,
    amqp: aio_pika.abc.AbstractChannel,
    smtp_sink: SmtpSink,
) -> None:
    w = worker.Worker(settings, handlers.load(settings.handlers))
    run = asyncio.create_task(w.run())
    await asyncio.wait_for(w.ready.wait(), 30)
    event = await publish("slow", {"seconds": 1.5}, requester={"email": "eve@example.com"})
    await wait_for_status(db, event.id, "running")
    w.stop()  # the job finishes during the drain, after the dispatcher's loop has ended
    await asyncio.wait_for(run, 60)
    # When run() returns, the job's effects are done and recorded: nothing is left to a
    # claim that would expire and be repeated by another worker.
    assert (await get_row(db, event.id)).status == "ready"
    assert [m["To"] for m in smtp_sink.messages] == ["eve@example.com"]
    assert {o["kind"]: o["status"] for o in await list_outbox(db, event.id)} == {
        "email_ready": "done",
        "event_ready": "done",
    }
