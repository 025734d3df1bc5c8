"""Issue 8's guarantees with real RabbitMQ and PostgreSQL: poison of every class is
dead-lettered at once on both queue types, cancellation wins, lost messages are recovered
from PostgreSQL, a rejected event can be resubmitted, and a conflicting body is visible."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.cli.smtp_sink import SmtpSink
from bgworker.contract import events
from bgworker.messaging import broker, topology
from tests.helpers import (
    DeadLetters,
    EventLog,
    Publish,
    PublishRaw,
    StartWorker,
    event_body,
    insert_request,
    list_outbox,
    raw,
    stored_keys,
    unfinished_writes,
    wait_for_status,
    wait_until,
)


def _with_criteria_text(rid: uuid.UUID, criteria_json: str) -> bytes:
    """An event whose criteria are written by hand (JSON that json.dumps would not make)."""
    return (
        f'{{"id": "{rid}", "file_type": "blob", "filename": "x.bin", "criteria": {criteria_json}}}'
    ).encode()


# name -> (body for a request id, the reasons accepted for its dead letter, has a usable id)
POISON: dict[str, tuple[Any, set[str], bool]] = {
    "not_json": (lambda rid: b"\x00\x01 not json at all \xff", {"malformed_json"}, False),
    "deep_json": (
        lambda rid: _with_criteria_text(rid, '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"),
        {"malformed_json", "invalid_schema"},
        False,  # the id may or may not be read from a body that cannot be parsed
    ),
    "lone_surrogate": (
        lambda rid: _with_criteria_text(rid, '{"q": "\\ud800"}'),
        {"invalid_schema"},
        True,
    ),
    "nan": (lambda rid: _with_criteria_text(rid, '{"x": NaN}'), {"invalid_schema"}, True),
    "huge_float": (lambda rid: _with_criteria_text(rid, '{"x": 1e999}'), {"invalid_schema"}, True),
    "huge_int": (
        lambda rid: _with_criteria_text(rid, '{"x": ' + "9" * 5000 + "}"),
        {"malformed_json", "invalid_schema"},
        False,
    ),
    "year_1": (
        lambda rid: raw(event_body(id=str(rid), requested_at="0001-01-01T00:00:00+23:59")),
        {"invalid_schema"},
        True,
    ),
    "year_9999": (
        lambda rid: raw(event_body(id=str(rid), requested_at="9999-12-31T23:59:59-23:59")),
        {"invalid_schema"},
        True,
    ),
    "line_separator_in_filename": (
        lambda rid: raw(event_body(id=str(rid), filename="report\u2028.csv")),
        {"invalid_schema"},
        True,
    ),
    "cr_in_content_type": (
        lambda rid: raw(event_body(id=str(rid), content_type="text/csv\r")),
        {"invalid_schema"},
        True,
    ),
}


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
async def test_every_poison_class_is_dead_lettered_at_once_and_good_work_goes_on(
    db: store.Store,
    publish: Publish,
    publish_raw: PublishRaw,
    start_worker: StartWorker,
    dead: DeadLetters,
    queue_type: str,
) -> None:
    w = await start_worker()
    ids = {name: uuid.uuid4() for name in POISON}
    bodies = {name: make(ids[name]) for name, (make, _, _) in POISON.items()}
    for body in bodies.values():
        await publish_raw(body)
    good = await publish("blob", {"size": 1000, "seed": 3})

    ready = await wait_for_status(db, good.id, "ready", timeout=20)
    assert ready.size_bytes == 1000
    # Within seconds, each poison message is one dead letter with its reason: never held,
    # never redelivered (a classic queue has no delivery limit to end a loop).
    await dead.wait_for(len(POISON))
    assert len(dead.seen) == len(POISON)
    for name, (_, reasons, has_id) in POISON.items():
        letter = dead.by_body(bodies[name])
        assert letter.headers["x-bgworker-reason"] in reasons, name
        assert letter.headers["x-bgworker-error"], name
        row = await db.requests.get_request(ids[name])
        if has_id:
            assert row is not None and row.status == "failed", name
            assert row.failure_reason in reasons, name
    assert w.outcomes["error"] == 0
    assert w.outcomes["duplicate"] == 0


async def test_a_value_postgresql_refuses_is_dead_lettered_as_unstorable(
    db: store.Store,
    publish: Publish,
    publish_raw: PublishRaw,
    start_worker: StartWorker,
    dead: DeadLetters,
    event_log: EventLog,
) -> None:
    """The safety net behind validation: an event the models accept but PostgreSQL refuses
    (here a real CHECK constraint added to this test's own database) is the message's fault:
    dead-lettered at once with reason unstorable, not held as if the database were away."""
    await db.pool.execute(
        "ALTER TABLE bgworker_requests ADD CONSTRAINT test_refuses "
        "CHECK (filename <> 'refused-by-the-database.bin')"
    )
    w = await start_worker()
    rid = uuid.uuid4()
    body = raw(event_body(id=str(rid), filename="refused-by-the-database.bin"))
    await publish_raw(body)
    good = await publish("blob", {"size": 10})
    await wait_for_status(db, good.id, "ready", timeout=20)
    [letter] = await dead.wait_for(1)
    assert letter.body == body
    assert letter.headers["x-bgworker-reason"] == "unstorable"
    assert letter.headers["x-bgworker-error-class"] == "CheckViolationError"
    # It carried an id: the producer gets a failed row and FileFailed.
    row = await wait_for_status(db, rid, "failed")
    assert row.failure_reason == "unstorable"
    await wait_until(lambda: any(b["id"] == str(rid) for k, b in event_log))
    assert w.outcomes["unstorable"] == 1 and w.outcomes["error"] == 0


async def test_an_unexpected_error_before_the_claim_is_not_held(
    db: store.Store,
    publish: Publish,
    publish_raw: PublishRaw,
    start_worker: StartWorker,
    dead: DeadLetters,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bug (here a crash injected into decoding, the one mock: a crash) must not hold the
    delivery as if a service were away: it is dead-lettered as unprocessable."""
    real = events.parse_file_requested

    def crashing(body: bytes) -> events.FileRequested:
        if b"crash-me" in body:
            raise KeyError("an unforeseen bug")
        return real(body)

    monkeypatch.setattr(events, "parse_file_requested", crashing)
    w = await start_worker()
    body = raw(event_body(filename="crash-me.bin"))
    await publish_raw(body)
    good = await publish("blob", {"size": 10})
    await wait_for_status(db, good.id, "ready", timeout=20)
    [letter] = await dead.wait_for(1)
    assert letter.headers["x-bgworker-reason"] == "unprocessable"
    assert letter.headers["x-bgworker-error-class"] == "KeyError"
    assert w.outcomes["unprocessable"] == 1


# -- cancellation wins ------------------------------------------------------------------


async def _cancel_while_running(db: store.Store, request_id: uuid.UUID) -> None:
    await wait_for_status(db, request_id, "running")
    assert await db.requests.request_cancel(request_id) == "running"


@pytest.mark.parametrize(
    ("file_type", "criteria"),
    [
        ("slow", {"seconds": 1.5}),
        ("fail_after", {"seconds": 1.5}),
        ("fail_after", {"seconds": 1.5, "permanent": True}),
    ],
    ids=["then-succeeds", "then-fails-and-would-retry", "then-fails-for-good"],
)
@pytest.mark.both_storages
async def test_cancel_wins_over_what_the_handler_does_next(
    db: store.Store,
    settings: settings_mod.Settings,
    publish: Publish,
    start_worker: StartWorker,
    event_log: EventLog,
    dead: DeadLetters,
    smtp_sink: SmtpSink,
    file_type: str,
    criteria: dict[str, Any],
) -> None:
    # A long lease: the handler ends before any heartbeat could notice the cancel, so the
    # outcome itself must refuse to override it.
    settings.worker.lease_seconds = 30
    w = await start_worker()
    event = await publish(file_type, criteria)
    await _cancel_while_running(db, event.id)
    row = await wait_for_status(db, event.id, {"cancelled", "ready", "retrying", "failed"})
    assert row.status == "cancelled"
    assert row.storage_key is None and row.size_bytes is None
    [attempt] = await db.requests.list_attempts(event.id)
    assert attempt["outcome"] == "cancelled"
    # Nothing a finished, retried or failed request would cause happened.
    good = await publish("blob", {"size": 10})  # everything before it has been settled
    await wait_for_status(db, good.id, "ready")
    await wait_until(lambda: any(b["id"] == str(good.id) for _, b in event_log))
    assert not [b for _, b in event_log if b["id"] == str(event.id)]
    assert await list_outbox(db, event.id) == []
    assert dead.seen == [] and await _dead_depth(dead) == 0
    assert (await db.requests.get_request(event.id)).status == "cancelled"  # type: ignore[union-attr]
    good_row = await db.requests.get_request(good.id)
    assert good_row is not None  # only the good request's file: the cancelled one's aborted
    assert await stored_keys(settings) == [good_row.storage_key]
    assert await unfinished_writes(settings) == []
    assert w.outcomes["cancelled"] == 1


async def _dead_depth(dead: DeadLetters) -> int:
    queue = await dead.channel.declare_queue(dead.name, passive=True)
    return int(queue.declaration_result.message_count or 0)


async def test_cancel_wins_when_the_lease_is_lost(
    db: store.Store, settings: settings_mod.Settings, publish: Publish, start_worker: StartWorker
) -> None:
    """The request is cancelled while its lease is taken from the running worker (as when
    its worker stalls past the lease): the reaper ends it cancelled, never requeued."""
    settings.worker.lease_seconds = 2
    await start_worker()
    event = await publish("slow", {"seconds": 30})
    await wait_for_status(db, event.id, "running")
    await db.pool.execute(
        "UPDATE bgworker_requests SET cancel_requested = true, lease_token = gen_random_uuid(),"
        " lease_expires_at = now() - interval '1 second' WHERE id = $1",
        event.id,
    )
    row = await wait_for_status(db, event.id, {"cancelled", "queued", "failed", "ready"})
    assert row.status == "cancelled"


# -- PostgreSQL is the source of truth: lost messages are republished -----------------------


async def test_a_retry_message_lost_from_its_delay_queue_is_recovered_once(
    db: store.Store,
    settings: settings_mod.Settings,
    amqp: aio_pika.abc.AbstractChannel,
    publish: Publish,
    start_worker: StartWorker,
    event_log: EventLog,
    smtp_sink: SmtpSink,
) -> None:
    settings.worker.retry_delays_seconds = [2.0]
    settings.worker.recovery_grace_seconds = 1.0
    topo = topology.Topology(settings.namespace, (2.0,), settings.queue_type)
    await topo.declare(amqp)
    await start_worker()
    event = await publish("flaky", {"fail_times": 1}, requester={"email": "ann@example.com"})
    await wait_for_status(db, event.id, "retrying")
    # The retry message sits in its 2 s delay queue: lose it (a broker failure would).
    delay_queue = await amqp.get_queue(topo.retry_queue(2.0), ensure=False)
    await delay_queue.purge()
    row = await wait_for_status(db, event.id, "ready", timeout=20)
    assert row.attempts == 2
    recoveries = await db.pool.fetchval(
        "SELECT recoveries FROM bgworker_requests WHERE id = $1", event.id
    )
    assert recoveries == 1
    # Completed once: one FileReady, one email.
    await wait_until(lambda: len(smtp_sink.messages) >= 1)
    await wait_until(lambda: [b for k, b in event_log if b["id"] == str(event.id)])
    ready_events = [k for k, b in event_log if b["id"] == str(event.id)]
    assert ready_events == [topology.READY_KEY]
    assert len([m for m in smtp_sink.messages if m["To"] == "ann@example.com"]) == 1


async def _lose_a_retry(
    db: store.Store,
    settings: settings_mod.Settings,
    amqp: aio_pika.abc.AbstractChannel,
    publish: Publish,
    start_worker: StartWorker,
) -> uuid.UUID:
    """A request whose retry message is lost on its way back (as a retry queue's dead-letter
    worker can hold it after a node loss), under the default recovery grace (600 s) and a
    stranded-retry time of 2 s."""
    settings.worker.retry_delays_seconds = [2.0]
    settings.worker.reap_interval_seconds = 0.5
    settings.worker.stranded_retry_seconds = 2.0
    assert settings.worker.recovery_grace_seconds == 600.0
    topo = topology.Topology(settings.namespace, (2.0,), settings.queue_type)
    await topo.declare(amqp)
    await start_worker()
    event = await publish("flaky", {"fail_times": 1})
    await wait_for_status(db, event.id, "retrying")
    delay_queue = await amqp.get_queue(topo.retry_queue(2.0), ensure=False)
    assert await delay_queue.purge()  # the retry was there, and is gone now
    return event.id


async def _recoveries(db: store.Store, request_id: uuid.UUID) -> int:
    query = "SELECT recoveries FROM bgworker_requests WHERE id = $1"
    return int(await db.pool.fetchval(query, request_id))


async def test_a_due_retry_lost_on_its_way_back_is_republished_soon_when_nothing_waits(
    db: store.Store,
    settings: settings_mod.Settings,
    amqp: aio_pika.abc.AbstractChannel,
    publish: Publish,
    start_worker: StartWorker,
) -> None:
    request_id = await _lose_a_retry(db, settings, amqp, publish, start_worker)
    # Due in 2 s; with the work queue empty the reaper republishes it 2 s later, not 600.
    row = await wait_for_status(db, request_id, "ready", timeout=20)
    assert row.attempts == 2
    assert await _recoveries(db, request_id) == 1


async def test_a_due_retry_waits_out_the_grace_while_messages_wait_in_the_queue(
    db: store.Store,
    settings: settings_mod.Settings,
    amqp: aio_pika.abc.AbstractChannel,
    publish: Publish,
    start_worker: StartWorker,
    tmp_path: Path,
) -> None:
    """With a backlog the retry may be in it: no early republish (it would only add
    duplicates to the queue); once the queue is empty, it comes."""
    settings.worker.concurrency = 1
    request_id = await _lose_a_retry(db, settings, amqp, publish, start_worker)
    gate = tmp_path / "gate"
    held = await publish("gate", {"path": str(gate)})  # takes the only slot
    await wait_for_status(db, held.id, "running")
    waiting = await publish("blob", {"size": 10})  # waits in the work queue
    work_queue = topology.Topology(settings.namespace, (2.0,), settings.queue_type).work_queue

    async def backlog() -> bool:
        return await broker.queue_depth(amqp, work_queue) == 1

    await wait_until(backlog, timeout=10)
    await asyncio.sleep(8)  # due for 6 s: three times the stranded-retry time, reaped often
    row = await db.requests.get_request(request_id)
    assert row is not None and row.status == "retrying"
    assert await _recoveries(db, request_id) == 0
    gate.touch()
    await wait_for_status(db, waiting.id, "ready", timeout=20)
    row = await wait_for_status(db, request_id, "ready", timeout=20)
    assert await _recoveries(db, request_id) == 1


async def test_a_queued_request_whose_message_never_arrived_is_republished(
    db: store.Store, settings: settings_mod.Settings, start_worker: StartWorker
) -> None:
    settings.worker.recovery_grace_seconds = 1.0
    event = events.FileRequested(
        id=uuid.uuid4(), file_type="blob", criteria={"size": 50}, filename="late.bin"
    )
    await insert_request(db, event, 3)  # recorded as queued; its message was lost on the way
    await start_worker()
    row = await wait_for_status(db, event.id, "ready", timeout=20)
    assert row.attempts == 1 and row.size_bytes == 50


# -- resubmission and conflicting duplicates ------------------------------------------------


async def test_an_invalid_event_corrected_under_the_same_id_is_built(
    db: store.Store,
    publish: Publish,
    publish_raw: PublishRaw,
    start_worker: StartWorker,
    event_log: EventLog,
    dead: DeadLetters,
) -> None:
    await start_worker()
    rid = uuid.uuid4()
    await publish_raw(raw(event_body(id=str(rid), requester={"email": "not-an-email"})))
    failed = await wait_for_status(db, rid, "failed")
    assert failed.failure_reason == "invalid_schema"
    await publish("blob", {"size": 321}, id=rid)
    row = await wait_for_status(db, rid, "ready")
    assert row.attempts == 1 and row.size_bytes == 321 and row.failure_reason is None
    await wait_until(lambda: topology.READY_KEY in [k for k, b in event_log if b["id"] == str(rid)])
    assert [k for k, b in event_log if b["id"] == str(rid)] == [
        topology.FAILED_KEY,
        topology.READY_KEY,
    ]
    # Once it is a real request, an invalid copy changes nothing (and is dead-lettered).
    await publish_raw(raw(event_body(id=str(rid), filename="../x")))
    await dead.wait_for(2)
    assert (await db.requests.get_request(rid)) == row


async def test_a_request_that_failed_for_good_is_not_resubmitted_by_publishing_again(
    db: store.Store, publish: Publish, start_worker: StartWorker
) -> None:
    w = await start_worker()
    event = await publish("permanent")
    await wait_for_status(db, event.id, "failed")
    again = await publish("permanent", id=event.id, filename=event.filename)
    assert again.id == event.id
    await wait_until(lambda: w.outcomes["duplicate"] == 1)
    row = await db.requests.get_request(event.id)
    assert row is not None and row.status == "failed" and row.attempts == 1


async def test_a_different_body_under_a_recorded_id_is_dead_lettered_and_changes_nothing(
    db: store.Store,
    publish: Publish,
    publish_raw: PublishRaw,
    start_worker: StartWorker,
    dead: DeadLetters,
) -> None:
    w = await start_worker()
    event = await publish("blob", {"size": 100})
    before = await wait_for_status(db, event.id, "ready")
    recorded = event.model_dump(mode="json")
    body = raw({**recorded, "filename": "other.bin", "criteria": {"size": 5}})
    await publish_raw(body)
    [letter] = await dead.wait_for(1)
    assert letter.headers["x-bgworker-reason"] == "conflicting_duplicate"
    assert "criteria" in str(letter.headers["x-bgworker-error"])
    assert "filename" in str(letter.headers["x-bgworker-error"])
    assert await db.requests.get_request(event.id) == before
    # The same body again is a plain duplicate: acked quietly, no second letter.
    await publish_raw(json.dumps(recorded).encode())
    await wait_until(lambda: w.outcomes["duplicate"] == 1)
    assert len(dead.seen) == 1


async def test_a_conflicting_body_cannot_claim_a_waiting_request(
    db: store.Store,
    settings: settings_mod.Settings,
    publish_raw: PublishRaw,
    start_worker: StartWorker,
    dead: DeadLetters,
) -> None:
    """A different body published under the id of a queued request must not run in its
    place: the recorded request runs, the other is dead-lettered."""
    settings.worker.recovery_grace_seconds = 1.0
    event = events.FileRequested(
        id=uuid.uuid4(), file_type="blob", criteria={"size": 77}, filename="real.bin"
    )
    await insert_request(db, event, 3)
    impostor = raw({**event.model_dump(mode="json"), "criteria": {"size": 5}})
    await publish_raw(impostor)
    await start_worker()
    [letter] = await dead.wait_for(1)
    assert letter.headers["x-bgworker-reason"] == "conflicting_duplicate"
    row = await wait_for_status(db, event.id, "ready", timeout=20)  # by the recovery sweep
    assert row.size_bytes == 77 and row.filename == "real.bin"
