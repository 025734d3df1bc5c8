"""`bgworker dlq`: dead letters made by the real worker, read and replayed on real services."""

from __future__ import annotations

import json
import uuid
from collections import Counter

import aio_pika
import pytest

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.messaging import broker, topology, wire
from bgworker.ops.deadletters import actions, letters, queue, reading, selection
from tests import dlq_handlers
from tests.helpers import (
    EventLog,
    Publish,
    PublishRaw,
    StartWorker,
    get_row,
    wait_for_status,
    wait_until,
)
from tests.integration.letters import Cli, depth, drain, make_letters, wait_depth

# The operator's "fixable" handler (tests/dlq_handlers.py), reset for each test.
pytestmark = pytest.mark.usefixtures("fixable_handler")


async def test_list_and_show_leave_the_queue_as_it_was(
    settings: settings_mod.Settings,
    db: store.Store,
    amqp: aio_pika.abc.AbstractChannel,
    publish: Publish,
    publish_raw: PublishRaw,
    start_worker: StartWorker,
    dead_queue: queue.DeadLetterQueue,
    cli: Cli,
) -> None:
    await start_worker()
    failing = await make_letters(db, amqp, dead_queue.name, publish, "always_fails", 3)
    unknown = await publish("no_such_type")
    await wait_for_status(db, unknown.id, "failed")
    await publish_raw(b"{not json")
    await wait_depth(amqp, dead_queue.name, 5)

    first = [letter async for letter in reading.matching(dead_queue)]
    assert len(first) == 5
    by_key = {letter.key: letter for letter in first}
    for request_id in failing:
        letter = by_key[str(request_id)]
        assert (letter.reason, letter.error_class, letter.attempts) == (
            "max_attempts",
            "RuntimeError",
            3,
        )
        assert letter.file_type == "always_fails" and letter.last_death is not None
    assert by_key[str(unknown.id)].reason == "unknown_file_type"
    [poison] = [letter for letter in first if letter.request_id is None]
    assert poison.key.startswith("msg-") and poison.error_class == "InvalidEventError"

    # Many reads, through the CLI and the API.
    code, out, err = await cli("dlq", "list")
    assert code == 0, err
    assert all(str(i) in out for i in failing) and poison.key in out
    assert "5 dead letter(s)" in err
    code, out, _ = await cli("dlq", "list", "--json", "--error-class", "RuntimeError")
    assert code == 0
    assert sorted(r["key"] for r in json.loads(out)) == sorted(map(str, failing))
    code, out, _ = await cli("dlq", "show", str(failing[0]))
    assert code == 0
    shown = json.loads(out)
    assert shown["payload"]["id"] == str(failing[0])
    assert shown["headers"]["x-bgworker-attempts"] == 3
    assert "this handler always fails" in shown["traceback"]
    assert shown["request"]["status"] == "failed"
    assert await reading.show(dead_queue, poison.key) is not None
    code, out, _ = await cli("dlq", "stats", "--json")
    assert code == 0
    stats = json.loads(out)
    assert stats["total"] == 5
    assert {"file_type": "always_fails", "error_class": "RuntimeError", "count": 3} in stats[
        "groups"
    ]

    # Same messages, same order: the first read saw the original order (nothing had been
    # requeued yet), and a destructive drain after all the reads finds exactly that.
    assert await depth(amqp, dead_queue.name) == 5
    left = [letters.Letter.from_message(m) for m in await drain(amqp, dead_queue.name)]
    assert [letter.key for letter in left] == [letter.key for letter in first]


async def test_replay_after_the_fix_makes_each_request_ready_once(
    settings: settings_mod.Settings,
    db: store.Store,
    amqp: aio_pika.abc.AbstractChannel,
    publish: Publish,
    start_worker: StartWorker,
    dead_queue: queue.DeadLetterQueue,
    event_log: EventLog,
    cli: Cli,
) -> None:
    await start_worker()
    ids = await make_letters(db, amqp, dead_queue.name, publish, "fixable", 4)
    assert (await get_row(db, ids[0])).attempts == 2

    code, out, _ = await cli("dlq", "replay", "--all", "--dry-run")
    assert code == 0 and "would-replay 4" in out and "dry run: nothing changed" in out
    assert await depth(amqp, dead_queue.name) == 4
    code, _, err = await cli("dlq", "replay")
    assert code == 64 and "--all" in err  # no selection: refused, nothing touched

    dlq_handlers.FIXED["value"] = True  # the fix is deployed
    code, out, err = await cli("dlq", "replay", "--all")
    assert code == 0, err
    assert "replayed 4" in out and "removed from the queue: 4" in out
    assert await depth(amqp, dead_queue.name) == 0

    for request_id in ids:
        row = await wait_for_status(db, request_id, "ready")
        assert row.attempts == 1  # counter reset by the replay
        actions = await db.dead_letters.list_actions(request_id)
        assert [a["action"] for a in actions] == ["replay"]
        assert actions[0]["previous_status"] == "failed"
        assert [a["outcome"] for a in actions[0]["attempt_log"]] == ["retrying", "failed"]
        attempts = await db.requests.list_attempts(request_id)
        assert [a["outcome"] for a in attempts] == ["ready"]
    await wait_until(lambda: len([k for k, _ in event_log if k == "file.ready"]) >= 4)
    ready = Counter(body["id"] for key, body in event_log if key == "file.ready")
    assert ready == Counter({str(i): 1 for i in ids})


async def test_keep_attempts_and_filters(
    settings: settings_mod.Settings,
    db: store.Store,
    amqp: aio_pika.abc.AbstractChannel,
    publish: Publish,
    start_worker: StartWorker,
    dead_queue: queue.DeadLetterQueue,
) -> None:
    await start_worker()
    [kept] = await make_letters(db, amqp, dead_queue.name, publish, "fixable", 1)
    [other] = await make_letters(db, amqp, dead_queue.name, publish, "permanent", 1)
    dlq_handlers.FIXED["value"] = True

    # By id, keeping the counter: attempt 3 of max 2 is allowed to run once more.
    report = await actions.replay(
        dead_queue,
        db,
        selection.Selection(ids=frozenset({str(kept)})),
        actor="test",
        keep_attempts=True,
    )
    assert report.counts == Counter({"replayed": 1})
    row = await wait_for_status(db, kept, "ready")
    assert row.attempts == 3 and [a["attempt"] for a in await db.requests.list_attempts(kept)] == [
        1,
        2,
        3,
    ]
    # The other letter is untouched, and a filter that matches nothing does nothing.
    report = await actions.replay(
        dead_queue, db, selection.Selection(file_type="nothing-like-this"), actor="test"
    )
    assert report.outcomes == [] and report.scanned == 1
    assert [letter.key async for letter in reading.matching(dead_queue)] == [str(other)]


async def test_worker_stopped_mid_replay_loses_nothing(
    settings: settings_mod.Settings,
    db: store.Store,
    amqp: aio_pika.abc.AbstractChannel,
    publish: Publish,
    start_worker: StartWorker,
    dead_queue: queue.DeadLetterQueue,
    event_log: EventLog,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first_worker = await start_worker()
    ids = await make_letters(db, amqp, dead_queue.name, publish, "fixable", 6)
    dlq_handlers.FIXED["value"] = True

    # The worker is stopped after the 2nd letter; the replay itself "crashes" on the 4th
    # letter after its republish is confirmed and its row committed, before the ack.
    acks = 0
    real_ack = queue.Held.ack

    async def crashing_ack(self: queue.Held) -> None:
        nonlocal acks
        acks += 1
        if acks == 4:
            raise RuntimeError("replay process died")
        await real_ack(self)

    def progress(done: int, total: int) -> None:
        if done == 2:
            first_worker.stop()

    monkeypatch.setattr(queue.Held, "ack", crashing_ack)
    with pytest.raises(RuntimeError, match="replay process died"):
        await actions.replay(
            dead_queue, db, selection.Selection(everything=True), actor="t", progress=progress
        )
    monkeypatch.undo()
    assert first_worker.stopping.is_set()

    # Three letters replayed and gone, the 4th replayed but still in the queue, 5-6 untouched.
    left = [letter.key async for letter in reading.matching(dead_queue)]
    assert len(left) == 3
    assert {(await get_row(db, i)).status for i in ids if str(i) in left[1:]} == {"failed"}

    await start_worker()
    interrupted = uuid.UUID(left[0])
    replayed_first = [i for i in ids if str(i) not in left[1:]]
    assert interrupted in replayed_first and len(replayed_first) == 4
    for request_id in replayed_first:
        await wait_for_status(db, request_id, "ready")

    # Running the replay again finishes the job: the interrupted one is ready, so it is
    # skipped (and its stale letter removed), the others are replayed.
    report = await actions.replay(dead_queue, db, selection.Selection(everything=True), actor="t")
    assert report.counts == Counter({"replayed": 2, "skipped": 1})
    [skipped] = [o for o in report.outcomes if o.result == "skipped"]
    assert skipped.key == str(interrupted) and "ready" in skipped.detail and skipped.removed
    assert await depth(amqp, dead_queue.name) == 0

    for request_id in ids:
        await wait_for_status(db, request_id, "ready")
    await wait_until(lambda: len([k for k, _ in event_log if k == "file.ready"]) >= 6)
    await wait_depth(amqp, topology.Topology(settings.namespace).work_queue, 0)
    ready = Counter(body["id"] for key, body in event_log if key == "file.ready")
    assert ready == Counter({str(i): 1 for i in ids})
    for request_id in ids:
        outcomes = [a["outcome"] for a in await db.requests.list_attempts(request_id)]
        assert outcomes.count("ready") == 1


async def test_purge_asks_then_removes_and_records(
    settings: settings_mod.Settings,
    db: store.Store,
    amqp: aio_pika.abc.AbstractChannel,
    publish: Publish,
    start_worker: StartWorker,
    dead_queue: queue.DeadLetterQueue,
    cli: Cli,
) -> None:
    await start_worker()
    doomed = await make_letters(db, amqp, dead_queue.name, publish, "permanent", 2)
    [kept] = await make_letters(db, amqp, dead_queue.name, publish, "fixable", 1)

    # No terminal (a pipe, /dev/null): nobody to ask, so refused with what to pass.
    code, out, err = await cli("dlq", "purge", "--file-type", "permanent")
    assert code == 64 and "pass --yes" in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err and await depth(amqp, dead_queue.name) == 3

    code, out, _ = await cli("dlq", "purge", "--file-type", "permanent", terminal="n\n")
    assert code == 1 and "purge 2 dead letter(s) for good?" in out and "cancelled" in out
    assert await depth(amqp, dead_queue.name) == 3

    code, out, err = await cli("dlq", "purge", "--file-type", "permanent", terminal="y\n")
    assert code == 0, err
    assert "purged 2" in out
    assert [letter.key async for letter in reading.matching(dead_queue)] == [str(kept)]
    for request_id in doomed:
        row = await db.pool.fetchrow(
            "SELECT status, dlq_purged_at FROM bgworker_requests WHERE id = $1", request_id
        )
        assert row["status"] == "failed" and row["dlq_purged_at"] is not None
        [action] = await db.dead_letters.list_actions(request_id)
        assert action["action"] == "purge" and action["actor"].startswith("cli:")

    code, out, _ = await cli("dlq", "purge", "--all", "--yes")
    assert code == 0 and "purged 1" in out
    assert await depth(amqp, dead_queue.name) == 0


async def test_clear_errors(
    settings: settings_mod.Settings, amqp: aio_pika.abc.AbstractChannel, cli: Cli
) -> None:
    code, _, err = await cli("dlq", "list", BGWORKER_NAMESPACE=f"nope-{uuid.uuid4().hex[:8]}")
    assert code == 69 and "does not exist" in err and "Traceback" not in err
    code, _, err = await cli("dlq", "stats", BGWORKER_AMQP_URL="amqp://guest:secretpw@127.0.0.1:1/")
    assert code == 69 and "cannot reach RabbitMQ at 127.0.0.1:1" in err
    assert "secretpw" not in err and "Traceback" not in err
    code, _, err = await cli("dlq", "show", str(uuid.uuid4()))
    assert code == 1 and "no dead letter" in err


async def test_invalid_letters_are_kept_not_replayed(
    settings: settings_mod.Settings,
    db: store.Store,
    amqp: aio_pika.abc.AbstractChannel,
    publish_raw: PublishRaw,
    start_worker: StartWorker,
    dead_queue: queue.DeadLetterQueue,
) -> None:
    await start_worker()
    await publish_raw(b'{"id": "%s", "file_type": 5}' % str(uuid.uuid4()).encode())
    await wait_depth(amqp, dead_queue.name, 1)
    report = await actions.replay(dead_queue, db, selection.Selection(everything=True), actor="t")
    [outcome] = report.outcomes
    assert outcome.result == "kept" and "still invalid" in outcome.detail
    assert await depth(amqp, dead_queue.name) == 1


async def test_broker_dead_lettered_messages_show_x_death_and_replay(
    settings: settings_mod.Settings,
    db: store.Store,
    amqp: aio_pika.abc.AbstractChannel,
    publish: Publish,
    dead_queue: queue.DeadLetterQueue,
    start_worker: StartWorker,
) -> None:
    # The work queue dead-letters to the same exchange: a rejected delivery arrives with
    # RabbitMQ's x-death header instead of ours.
    event = await publish("blob", {"size": 10})
    work = await amqp.get_queue(topology.Topology(settings.namespace).work_queue, ensure=False)
    message = await work.get(no_ack=False)
    await message.reject(requeue=False)
    await wait_depth(amqp, dead_queue.name, 1)

    [letter] = [letter async for letter in reading.matching(dead_queue)]
    assert (letter.key, letter.error_class, letter.reason) == (str(event.id), "x-death", "rejected")
    assert letter.first_death is not None and letter.file_type == "blob"
    shown = await reading.show(dead_queue, str(event.id))
    assert shown is not None and shown["headers"]["x-death"][0]["reason"] == "rejected"

    report = await actions.replay(dead_queue, db, selection.Selection(everything=True), actor="t")
    assert report.counts == Counter({"replayed": 1})  # never recorded: replayed as is
    await start_worker()
    await wait_for_status(db, event.id, "ready")


async def test_thousands_of_letters(
    settings: settings_mod.Settings,
    db: store.Store,
    amqp: aio_pika.abc.AbstractChannel,
    dead_queue: queue.DeadLetterQueue,
) -> None:
    """Read, count and select among 2000 letters; reads leave all of them in place."""
    channel = await broker.open_channel(dead_queue.connection)  # type: ignore[arg-type]
    n = 2000
    for i in range(n):
        body = json.dumps({"id": str(uuid.uuid4()), "file_type": f"t{i % 4}"}).encode()
        letter = wire.DeadLetter("max_attempts", f"E{i % 3}", "boom", attempts=3)
        message = wire.dead_letter(body, letter, worker_id="w", message_id=None, routing_key=None)
        await broker.publish(channel, dead_queue.topology.dead_exchange, "", message)
    await wait_depth(amqp, dead_queue.name, n)

    result = await reading.stats(dead_queue)
    assert result.total == n and result.by_group[("t0", "E0")] == 167
    e1 = selection.Selection(error_class="E1")
    selected = [x async for x in reading.matching(dead_queue, e1)]
    assert len(selected) == 667
    report = await actions.purge(
        dead_queue, db, selection.Selection(error_class="E2"), actor="t", dry_run=True
    )
    assert report.counts == Counter({"would-purge": 666}) and report.scanned == n
    assert await depth(amqp, dead_queue.name) == n
