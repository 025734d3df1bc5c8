"""Poison messages: each lands in the dead-letter queue with its reason, the worker goes on."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from bgworker import store
from bgworker.messaging import topology
from tests.helpers import (
    DeadLetters,
    EventLog,
    Publish,
    PublishRaw,
    StartWorker,
    event_body,
    raw,
    wait_for_status,
    wait_until,
)
from tests.integration.letters import Cli


async def test_bad_events_are_dead_lettered_with_reasons_and_the_worker_goes_on(
    db: store.Store,
    publish: Publish,
    publish_raw: PublishRaw,
    start_worker: StartWorker,
    event_log: EventLog,
    dead: DeadLetters,
) -> None:
    w = await start_worker()
    bad_email_id, version_id, unknown_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    cases = {
        b"{not json": ("malformed_json", None),
        b"\xff\xfe not utf-8": ("malformed_json", None),
        b"[1, 2, 3]": ("invalid_schema", None),
        raw(event_body(id=str(bad_email_id), requester={"email": "not-an-email"})): (
            "invalid_schema",
            bad_email_id,
        ),
        raw(event_body(id=str(version_id), schema_version=99)): (
            "unsupported_schema_version",
            version_id,
        ),
        raw(event_body(id=str(unknown_id), file_type="no_such_handler")): (
            "unknown_file_type",
            unknown_id,
        ),
    }
    for body in cases:
        await publish_raw(body)
    good = await publish("blob", {"size": 5000, "seed": 1})

    # The good request, published last, is still built: nothing blocked or crashed the pool.
    ready = await wait_for_status(db, good.id, "ready")
    assert ready.size_bytes == 5000

    await dead.wait_for(len(cases))
    for body, (reason, request_id) in cases.items():
        message = dead.by_body(body)
        headers = message.headers
        assert headers["x-bgworker-reason"] == reason, body
        assert headers["x-bgworker-error-class"] in {"InvalidEventError", "UnknownFileTypeError"}
        assert headers["x-bgworker-error"]
        assert headers["x-bgworker-routing-key"] == topology.REQUESTED_KEY
        if reason == "invalid_schema" and request_id is not None:
            assert "requester.email" in str(headers["x-bgworker-error"])
        if reason == "unknown_file_type":
            assert headers["x-bgworker-error-class"] == "UnknownFileTypeError"
            assert "no_such_handler" in str(headers["x-bgworker-error"])
        else:
            assert headers["x-bgworker-error-class"] == "InvalidEventError"
    # Each went to the dead-letter queue once, never looped back.
    assert len(dead.seen) == len(cases)

    # A parseable id gives the producer a failed row and a FileFailed event.
    with_id = {rid: reason for reason, rid in cases.values() if rid is not None}
    for rid, reason in with_id.items():
        row = await db.requests.get_request(rid)
        assert row is not None and row.status == "failed"
        assert row.failure_reason == reason
        assert row.last_error

    def failed_events() -> dict[str, dict[str, Any]]:
        return {body["id"]: body for key, body in event_log if key == topology.FAILED_KEY}

    await wait_until(lambda: set(failed_events()) >= {str(rid) for rid in with_id})
    for rid, reason in with_id.items():
        event = failed_events()[str(rid)]
        assert event["reason"] == reason
        assert event["error"]
    assert failed_events()[str(unknown_id)]["file_type"] == "no_such_handler"
    # Only those: the bodies without an id had nobody to tell, the good one became ready.
    assert len(failed_events()) == len(with_id)
    assert [k for k, b in event_log if b["id"] == str(good.id)] == [topology.READY_KEY]
    # Counted once each, just after the delivery is settled.
    await wait_until(lambda: w.outcomes["invalid"] == 5 and w.outcomes["failed"] == 1)
    assert w.outcomes["error"] == 0


async def test_bad_event_reusing_a_real_id_changes_nothing(
    db: store.Store,
    publish: Publish,
    publish_raw: PublishRaw,
    start_worker: StartWorker,
    dead: DeadLetters,
) -> None:
    await start_worker()
    good = await publish("blob", {"size": 100})
    before = await wait_for_status(db, good.id, "ready")
    body = raw(event_body(id=str(good.id), filename="../../etc/passwd"))
    await publish_raw(body)
    [letter] = await dead.wait_for(1)
    assert letter.body == body
    assert letter.headers["x-bgworker-reason"] == "invalid_schema"
    assert await db.requests.get_request(good.id) == before


@pytest.mark.parametrize(
    "overrides",
    [
        {"filename": "nul\x00.bin"},  # invalid: the rejected body must still be recordable
        {"description": "nul \x00 in description"},  # valid for pydantic
        {"criteria": {"q": "nul \x00 in criteria"}},
    ],
    ids=["invalid-filename", "valid-description", "valid-criteria"],
)
async def test_nul_characters_do_not_poison_the_queue(
    db: store.Store,
    publish: Publish,
    publish_raw: PublishRaw,
    start_worker: StartWorker,
    dead: DeadLetters,
    overrides: dict[str, Any],
) -> None:
    """PostgreSQL text and jsonb cannot hold U+0000: such an event must end somewhere
    (dead letter or a file), not be redelivered in a loop."""
    w = await start_worker()
    rid = uuid.uuid4()
    body = raw(event_body(id=str(rid), **overrides))
    await publish_raw(body)
    good = await publish("blob", {"size": 100})
    await wait_for_status(db, good.id, "ready")
    [letter] = await dead.wait_for(1)
    assert letter.body == body
    assert letter.headers["x-bgworker-reason"] in {"invalid_schema", "unsupported_characters"}
    assert w.outcomes["error"] == 0


async def test_undecodable_body_with_an_id_in_its_properties_is_recorded_as_failed(
    db: store.Store,
    publish_raw: PublishRaw,
    start_worker: StartWorker,
    event_log: EventLog,
    dead: DeadLetters,
    cli: Cli,
) -> None:
    # Issue 18, finding 5: JSON nested too deep to decode names no id in its body, but the
    # message carries the request id as its message_id (as wire.request publishes it).
    # Dead-lettered at once as before, and now recorded too: status tells the truth and the
    # producer hears a FileFailed, once.
    await start_worker()
    rid = uuid.uuid4()
    body = b"[" * 5000 + b"]" * 5000
    await publish_raw(body, message_id=str(rid))
    [letter] = await dead.wait_for(1)
    assert letter.headers["x-bgworker-reason"] == "malformed_json"
    assert letter.message_id == str(rid)

    row = await wait_for_status(db, rid, "failed")
    assert row.failure_reason == "malformed_json"
    assert row.last_error_class == "InvalidEventError" and row.last_error
    code, out, err = await cli("status", "--json", str(rid))
    assert code == 0, err
    shown = json.loads(out)
    assert (shown["status"], shown["failure_reason"]) == ("failed", "malformed_json")

    def failed() -> list[dict[str, Any]]:
        return [b for k, b in event_log if k == topology.FAILED_KEY and b["id"] == str(rid)]

    await wait_until(failed)
    [event] = failed()
    assert event["reason"] == "malformed_json"
    # Redelivered or published again, the same bytes change nothing and tell nobody twice.
    await publish_raw(body, message_id=str(rid))
    await dead.wait_for(2)
    assert await db.requests.get_request(rid) == row
    kinds = [effect["kind"] for effect in await db.listing.effects(rid)]
    assert kinds.count("event_failed") == 1


# "": aio-pika publishes a made-up 32-digit hex id instead, which names no request.
@pytest.mark.parametrize(
    "message_id", ["raw", "", "0a2899be5b0c4a0e9b0c9f6d7a1e2f3c", "0a2899be-not-a-uuid"]
)
async def test_undecodable_body_without_a_usable_id_records_nothing(
    db: store.Store,
    publish_raw: PublishRaw,
    start_worker: StartWorker,
    dead: DeadLetters,
    message_id: str,
) -> None:
    await start_worker()
    await publish_raw(b"{not json", message_id=message_id)
    [letter] = await dead.wait_for(1)
    assert letter.headers["x-bgworker-reason"] == "malformed_json"
    assert await db.maintenance.count_by_status() == {}
