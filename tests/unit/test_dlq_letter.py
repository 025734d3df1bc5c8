"""Any bytes as a letter body and any header table never break reading a dead letter.

Property-based (hypothesis). Messages are built the way aio-pika builds them from the wire:
the header table is marshalled by pamqp into a content header frame and unmarshalled
again, so the values have exactly the types a real ``basic.get`` yields (``bytearray``
for byte arrays, ``bytes`` for long strings that are not UTF-8, ``Decimal``, ``datetime``).
"""

from __future__ import annotations

import json
import math
import re
import struct
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import aio_pika
import pamqp.encode
import pamqp.frame
import pytest
from aiormq.abc import DeliveredMessage
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import commands, header

from bgworker.ops.deadletters import letters
from tests import helpers

# Anything but newline and tab that a reader could trip over: controls, lone surrogates.
UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


class RawLongString(bytes):
    """A long string ('S') whose bytes are sent as they are: not UTF-8 when we want."""


@pytest.fixture(autouse=True)
def raw_long_strings(monkeypatch: pytest.MonkeyPatch) -> None:
    # pamqp only encodes str; other AMQP clients send any bytes, and pamqp then decodes
    # a long string that is not UTF-8 to bytes (pamqp.decode.long_str).
    real = pamqp.encode.encode_table_value

    def encode(value: Any) -> bytes:
        if isinstance(value, RawLongString):
            return b"S" + struct.pack(">I", len(value)) + bytes(value)
        return real(value)

    monkeypatch.setattr(pamqp.encode, "encode_table_value", encode)


def message(body: bytes, headers: dict[str, Any] | None, message_id: str | None = None) -> Any:
    """An aio-pika IncomingMessage, with its header frame through pamqp both ways."""
    props = commands.Basic.Properties(
        headers=headers, message_id=message_id, content_type="application/json"
    )
    wire = pamqp.frame.marshal(header.ContentHeader(0, len(body), props), 1)
    _, _, frame = pamqp.frame.unmarshal(wire)
    assert isinstance(frame, header.ContentHeader)
    delivered = DeliveredMessage(
        delivery=commands.Basic.GetOk(delivery_tag=1, exchange="x", routing_key=""),
        header=frame,
        body=body,
        channel=None,  # type: ignore[arg-type]
    )
    return aio_pika.IncomingMessage(delivered, no_ack=True)


def walk(value: Any) -> Iterator[Any]:
    stack = [value]
    while stack:
        item = stack.pop()
        yield item
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def assert_printable(value: Any) -> None:
    """Strict JSON, UTF-8 encodable, no control characters or lone surrogates anywhere."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    text.encode("utf-8")  # raises on a lone surrogate
    for item in walk(value):
        assert not isinstance(item, bytes | bytearray | float) or (
            isinstance(item, float) and math.isfinite(item)
        )
        if isinstance(item, str):
            assert not UNPRINTABLE.search(item), item
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in output")) == value


def read(msg: Any) -> tuple[letters.Letter, dict[str, Any]]:
    letter = letters.Letter.from_message(msg)
    shown = letters.detail(msg)
    assert_printable(letter.to_json())
    assert_printable(shown)
    assert letters.Letter.from_message(msg) == letter  # the key is stable
    if letter.request_id is None:
        assert re.fullmatch(r"msg-[0-9a-f]{16}", letter.key)
    else:
        assert letter.key == str(letter.request_id)
    return letter, shown


# -- strategies -------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and infinities too: json.dumps writes them, json.loads reads them
    | st.text()  # lone surrogates too: json.dumps escapes them as "\ud800"
)
json_docs = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
event_like = st.fixed_dictionaries(
    {"id": st.uuids().map(str) | st.text(), "file_type": st.text() | st.integers()},
    optional={"criteria": json_docs, "filename": st.text()},
)
deep = st.integers(1, 120_000).map(lambda n: b"[" * n + b"]" * n)
bodies = (
    st.binary(max_size=512)
    | json_docs.map(lambda d: json.dumps(d).encode())
    | event_like.map(lambda d: json.dumps(d).encode())
    | deep
    | st.integers(4000, 6000).map(lambda n: b'{"n": ' + b"9" * n + b"}")
    | st.sampled_from([b"", b"NaN", b'"\\ud800"', b'{"id": "\\udfff"}', b"\xff\xfe{}", b"1e999"])
)

# AMQP 0-9-1 field values as RabbitMQ relays them (https://www.rabbitmq.com/docs/amqp-0-9-1-errata#section_3)
offsets = st.integers(-23 * 60, 23 * 60).map(lambda m: timezone(timedelta(minutes=m)))
amqp_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    # pamqp sends floats as 32-bit 'f' fields; RabbitMQ refuses a NaN one (INTERNAL_ERROR).
    | st.floats(allow_nan=False, allow_infinity=False, width=32)
    | st.decimals(
        allow_nan=False, allow_infinity=False, places=2, min_value=-(10**6), max_value=10**6
    )
    | st.text().map(lambda t: t.encode("utf-8", "replace").decode("utf-8"))
    | st.binary(max_size=32).map(RawLongString)
    | st.binary(max_size=32).map(bytearray)
    | st.datetimes(
        min_value=datetime(1970, 1, 2), max_value=datetime(2106, 1, 1), timezones=st.just(UTC)
    )
)
amqp_values = st.recursive(
    amqp_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)
header_names = st.sampled_from(
    [
        "x-death",
        "x-bgworker-reason",
        "x-bgworker-error-class",
        "x-bgworker-error",
        "x-bgworker-attempts",
        "x-bgworker-worker",
        "x-bgworker-failed-at",
        "x-bgworker-traceback",
    ]
) | st.text(max_size=12)
x_death = st.lists(
    st.dictionaries(st.sampled_from(["reason", "time", "count", "queue"]), amqp_values, max_size=4)
    | amqp_values,
    max_size=3,
)
header_tables = st.dictionaries(header_names, amqp_values, max_size=6) | st.builds(
    lambda deaths, rest: {"x-death": deaths, **rest},
    x_death,
    st.dictionaries(header_names, amqp_values, max_size=3),
)
times = st.datetimes(
    min_value=datetime(1, 1, 1),
    max_value=datetime(9999, 12, 31),
    timezones=st.one_of(st.none(), offsets),
)


# -- properties -------------------------------------------------------------------------


@settings(max_examples=helpers.examples(300), deadline=None)
@given(body=bodies, headers=st.none() | header_tables, message_id=st.none() | st.text(max_size=40))
def test_any_letter_reads_as_printable_json(
    body: bytes, headers: dict[str, Any] | None, message_id: str | None
) -> None:
    # Short strings (message_id) are UTF-8 on the wire: pamqp encodes them, so no surrogates.
    if message_id is not None:
        message_id = message_id.encode("utf-8", "replace").decode("utf-8")[:60]
    letter, shown = read(message(body, headers, message_id))
    assert letter.size == len(body) and shown["body_sha256"]
    # A body that is not a JSON object says so; one that is, is shown as a payload.
    if letter.body_error is None and len(body) <= letters.SHOW_BYTES:
        assert shown["body"] is None
    else:
        assert shown["payload"] is None and isinstance(shown["body"], str)


@settings(max_examples=helpers.examples(200), deadline=None)
@given(
    body=bodies,
    headers=st.dictionaries(
        header_names,
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers()  # beyond 64 bits, beyond 4300 digits
            | st.floats()
            | st.decimals()  # NaN, sNaN, 1E+400
            | st.text()  # lone surrogates, controls
            | st.binary()
            | st.binary().map(bytearray)
            | times
            | st.uuids()
            | st.builds(object),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.tuples(inner)
                | st.dictionaries(st.text(max_size=6), inner, max_size=3)
            ),
            max_leaves=10,
        ),
        max_size=6,
    )
    | st.text()
    | st.integers(),
    message_id=st.none() | st.text() | st.binary() | st.integers(),
)
def test_pure_reading_takes_any_python_values(body: bytes, headers: Any, message_id: Any) -> None:
    """Beyond what the wire can carry: the pure functions are total too."""
    letter = letters.Letter.from_parts(body, headers, message_id)
    assert_printable(letter.to_json())
    assert_printable(letters.detail_of(body, headers, {"message_id": message_id}))


@pytest.mark.parametrize(
    ("body", "body_error", "note"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply", None),
        (b'{"file_type": "\\ud800"}', None, "lone UTF-16 surrogates replaced"),
        (b'{"x": NaN}', None, "nan (not valid JSON) shown as a string"),
        (b'{"n": ' + b"7" * 5000 + b"}", "not JSON: Exceeds the limit (4300 digits)", None),
        (b"\xff\xfe\x00garbage", "not", "invalid UTF-8 replaced"),
        (b"", "not JSON", None),
        (b"plain text \x1b[31m red", "not JSON", "control characters replaced"),
    ],
)
def test_hostile_bodies_say_what_was_replaced(
    body: bytes, body_error: str | None, note: str | None
) -> None:
    letter, shown = read(message(body, {"x-bgworker-reason": "malformed_json"}))
    if body_error is None:
        assert letter.body_error is None
    else:
        assert letter.body_error is not None and body_error in letter.body_error
    if note is not None:
        assert any(note in n for n in shown["notes"]), shown["notes"]
    assert letter.key.startswith("msg-") and letter.reason == "malformed_json"


def test_headers_of_odd_types() -> None:
    headers = {
        "x-death": "not a list",
        "x-bgworker-error": RawLongString(b"caf\xe9 \x00 \xff"),
        "x-bgworker-error-class": bytearray(b"Bytes\xffError"),
        "x-bgworker-attempts": "three",
        "x-bgworker-failed-at": "9999-12-31T23:00:00-05:00",  # later than 9999 in UTC
        "x-nested": {"a": [1, {"b": [Decimal("1.50"), datetime(2020, 1, 1, tzinfo=UTC)]}]},
    }
    event_id = uuid.uuid4()
    letter, shown = read(message(json.dumps({"id": str(event_id)}).encode(), headers))
    assert letter.key == str(event_id)
    assert letter.error == "caf\ufffd \ufffd \ufffd" and letter.error_class == "Bytes\ufffdError"
    assert letter.attempts is None and letter.last_death is None
    assert letter.reason == "unknown"
    assert shown["headers"]["x-nested"] == {"a": [1, {"b": [1.5, "2020-01-01T00:00:00+00:00"]}]}
    assert shown["headers"]["x-death"] == "not a list"
    assert "header x-bgworker-error: invalid UTF-8 replaced with U+FFFD" in shown["notes"]


def test_huge_body_is_shown_in_part() -> None:
    body = json.dumps({"id": str(uuid.uuid4()), "pad": "x" * (3 * 1024 * 1024)}).encode()
    letter, shown = read(message(body, None))
    assert letter.size == len(body) and letter.body_error is None
    assert shown["payload"] is None and len(shown["body"]) == letters.SHOW_BYTES
    assert any("the first 262144 shown" in n for n in shown["notes"])
