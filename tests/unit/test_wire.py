"""The wire format: the messages bgworker publishes and the headers it reads back."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import aio_pika
from aiormq.abc import DeliveredMessage
from hypothesis import given
from hypothesis import strategies as st
from pamqp import commands, encode, header

from bgworker.contract import events, states
from bgworker.messaging import topology, wire


def _delivered(*, redelivered: bool, headers: dict[str, Any] | None) -> aio_pika.IncomingMessage:
    """A real incoming message, as aio-pika builds it from the broker's frames."""
    frames = DeliveredMessage(
        delivery=commands.Basic.Deliver("ctag", 1, redelivered, "ns.requests", "file.requested"),
        header=header.ContentHeader(0, 0, commands.Basic.Properties(headers=headers)),
        body=b"{}",
        channel=None,  # type: ignore[arg-type]  # never acked here
    )
    return aio_pika.IncomingMessage(frames)


def test_request_from_a_recorded_event_is_compact_json() -> None:
    message = wire.request({"id": "x", "criteria": {"a": 1}}, "x")
    assert message.body == b'{"id":"x","criteria":{"a":1}}'
    assert message.message_id == "x"
    assert message.type == "FileRequested"
    assert message.content_type == "application/json"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert not message.headers


@given(st.binary(max_size=256))
def test_request_sends_received_bytes_unchanged(body: bytes) -> None:
    # A retry carries the body exactly as the producer sent it, even one that is not JSON.
    assert wire.request(body, "id").body == body


def test_request_replayed_carries_the_replay_count() -> None:
    assert wire.request(b"{}", "id", replays=2).headers == {wire.REPLAY: 2}
    assert wire.request(b"{}", "id", replays=0).headers == {wire.REPLAY: 0}


def test_dead_letter_headers_say_why() -> None:
    letter = wire.DeadLetter(
        reason=states.Reason.MAX_ATTEMPTS,
        error_class="ValueError",
        error="boom",
        attempts=3,
        traceback="Traceback ...",
    )
    message = wire.dead_letter(
        b"body", letter, worker_id="w1", message_id="m1", routing_key="file.requested"
    )
    headers = message.headers
    assert message.body == b"body"
    assert message.message_id == "m1"
    assert headers[wire.REASON] == "max_attempts"
    assert headers[wire.ERROR_CLASS] == "ValueError"
    assert headers[wire.ERROR] == "boom"
    assert headers[wire.ATTEMPTS] == 3
    assert headers[wire.WORKER] == "w1"
    assert headers[wire.ROUTING_KEY] == "file.requested"
    assert headers[wire.TRACEBACK] == "Traceback ..."
    failed_at = datetime.fromisoformat(str(headers[wire.FAILED_AT]))
    assert failed_at.tzinfo is not None


def test_dead_letter_without_traceback_or_routing_key() -> None:
    letter = wire.DeadLetter(reason="unprocessable", error_class="E", error="", attempts=0)
    message = wire.dead_letter(b"", letter, worker_id="w", message_id=None, routing_key=None)
    assert wire.TRACEBACK not in message.headers
    assert message.headers[wire.ROUTING_KEY] == topology.REQUESTED_KEY


# Any text, lone surrogates included (st.text() leaves them out).
_ANY_TEXT = st.lists(
    st.one_of(st.characters(), st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF))
).map("".join)


@given(error=_ANY_TEXT, trace=_ANY_TEXT)
def test_dead_letter_headers_always_encode(error: str, trace: str) -> None:
    """Error texts quote hostile events (lone surrogates, any length): the headers must
    still encode as an AMQP table, or the dead letter itself could not be published."""
    letter = wire.DeadLetter(
        reason="invalid_schema", error_class="E", error=error, attempts=0, traceback=trace
    )
    message = wire.dead_letter(b"", letter, worker_id="w", message_id=None, routing_key=None)
    encode.field_table(message.headers)  # raises on a value AMQP cannot carry
    shown = message.headers[wire.ERROR]
    assert isinstance(shown, str)
    shown.encode("utf-8")
    has_surrogate = any("\ud800" <= c <= "\udfff" for c in error)
    if len(error) <= wire.ERROR_LIMIT and not has_surrogate:
        assert shown == error  # only what UTF-8 cannot carry is escaped


@given(st.text(min_size=wire.ERROR_LIMIT + 1, alphabet=st.characters(codec="utf-8")))
def test_long_error_is_cut_to_the_limit(error: str) -> None:
    letter = wire.DeadLetter(reason="x", error_class="E", error=error, attempts=0)
    message = wire.dead_letter(b"", letter, worker_id="w", message_id=None, routing_key=None)
    shown = message.headers[wire.ERROR]
    assert isinstance(shown, str)
    assert len(shown) == wire.ERROR_LIMIT
    assert shown.endswith("...")
    assert error.startswith(shown[:-3])


def test_event_message_id_is_one_per_request_and_kind() -> None:
    request_id = uuid.uuid4()
    failed = events.FileFailed(
        id=request_id,
        reason="max_attempts",
        error_class="E",
        error="boom",
        attempts=4,
        failed_at=datetime.now(UTC),
    )
    message = wire.event(failed, topology.FAILED_KEY)
    assert message.message_id == f"{request_id}.{topology.FAILED_KEY}"
    assert message.type == "FileFailed"
    assert json.loads(message.body)["id"] == str(request_id)
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT


def test_redelivered_reads_the_flag_and_the_quorum_delivery_count() -> None:
    assert not wire.redelivered(_delivered(redelivered=False, headers=None))
    assert not wire.redelivered(_delivered(redelivered=False, headers={"other": 1}))
    assert wire.redelivered(_delivered(redelivered=True, headers=None))
    assert wire.redelivered(_delivered(redelivered=False, headers={wire.X_DELIVERY_COUNT: 1}))
    assert not wire.redelivered(_delivered(redelivered=False, headers={wire.X_DELIVERY_COUNT: 0}))
