"""FileRequested validation: every rejection names the field and the reason code."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import pytest
from pydantic import ValidationError

from bgworker.contract import events, strict_json


def _valid(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "file_type": "blob",
        "criteria": {"size": 10},
        "filename": "report.csv",
        "content_type": "text/csv",
        "requester": {"id": "u1", "email": "ann@example.com", "timezone": "Europe/Paris"},
    }
    body.update(overrides)
    return body


def _error_fields(exc: ValidationError) -> set[str]:
    return {".".join(str(p) for p in err["loc"]) for err in exc.errors()}


def test_a_valid_event_parses() -> None:
    body = _valid()
    event = events.parse_file_requested(json.dumps(body).encode())
    assert str(event.id) == body["id"]
    assert event.requester is not None and event.requester.timezone == "Europe/Paris"
    assert event.schema_version == events.SCHEMA_VERSION


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"requester": {"email": "not-an-email"}}, "requester.email"),
        ({"requester": {"timezone": "Mars/Olympus_Mons"}}, "requester.timezone"),
        ({"requester": {"language": "english!"}}, "requester.language"),
        ({"requester": {"language": "en\n"}}, "requester.language"),
        ({"filename": "../etc/passwd"}, "filename"),
        ({"filename": "dir\\file.csv"}, "filename"),
        ({"filename": 'say "hi".csv'}, "filename"),
        ({"filename": "line\nbreak.csv"}, "filename"),
        ({"filename": "tab\there.csv"}, "filename"),
        ({"filename": "nul\x00.csv"}, "filename"),
        ({"filename": ".."}, "filename"),
        ({"filename": " padded.csv"}, "filename"),
        ({"filename": ""}, "filename"),
        ({"criteria": {"blob": "x" * (events.MAX_CRITERIA_BYTES + 1)}}, "criteria"),
        ({"file_type": "Bad Type!"}, "file_type"),
        ({"file_type": ""}, "file_type"),
        ({"content_type": "not a mime type"}, "content_type"),
        ({"lifetime_seconds": 1}, "lifetime_seconds"),
        ({"id": "not-a-uuid"}, "id"),
        ({"description": "nul \x00 here"}, "description"),
        ({"criteria": {"q": ["ok", {"deep": "nul \x00"}]}}, "criteria"),
        ({"criteria": {"key\x00": 1}}, "criteria"),
        ({"content_type": "text/plain; x=\x00"}, "content_type"),
        ({"requester": {"id": "u\x00"}}, "requester.id"),
        ({"unexpected": 1}, "unexpected"),
        ({"requester": {"email": "a@example.com", "nickname": "a"}}, "requester.nickname"),
    ],
)
def test_invalid_field_is_named(overrides: dict[str, Any], field: str) -> None:
    body = _valid(**overrides)
    with pytest.raises(ValidationError) as info:
        events.FileRequested.model_validate(body)
    assert field in _error_fields(info.value)
    # The same body through the worker's parser: reason code and the field in the message.
    with pytest.raises(events.InvalidEventError) as parsed:
        events.parse_file_requested(json.dumps(body).encode())
    assert parsed.value.reason == "invalid_schema"
    assert _names(str(parsed.value), field)


def _names(message: str, field: str) -> bool:
    """The message names ``field`` (or a place inside it, ``criteria.q.1``) as a subject."""
    return re.search(rf"(^|; ){re.escape(field)}[.:]", message) is not None


def test_filename_error_names_the_offending_characters() -> None:
    with pytest.raises(ValidationError) as info:
        events.FileRequested.model_validate(_valid(filename="a/b.csv"))
    assert "path separators" in str(info.value)
    assert "'/'" in str(info.value)


def test_criteria_at_the_limit_is_accepted_and_one_byte_more_is_not() -> None:
    overhead = len(json.dumps({"k": ""}, separators=(",", ":")).encode())
    at_limit = {"k": "x" * (events.MAX_CRITERIA_BYTES - overhead)}
    assert events.FileRequested.model_validate(_valid(criteria=at_limit)).criteria == at_limit
    over = {"k": "x" * (events.MAX_CRITERIA_BYTES - overhead + 1)}
    with pytest.raises(ValidationError, match="criteria"):
        events.FileRequested.model_validate(_valid(criteria=over))


def test_nul_error_names_where_it_is() -> None:
    with pytest.raises(ValidationError, match=r"NUL characters \(U\+0000\) \(at q\.1\.deep\)"):
        events.FileRequested.model_validate(_valid(criteria={"q": ["ok", {"deep": "\x00"}]}))


def test_storable_replaces_nul_characters() -> None:
    raw = {"a\x00": ["x\x00y", {"b": "\x00"}], "n": 1, "t": None}
    assert events.storable(raw) == {"a\ufffd": ["x\ufffdy", {"b": "\ufffd"}], "n": 1, "t": None}


def test_unicode_filename_is_allowed() -> None:
    event = events.FileRequested.model_validate(_valid(filename="Résumé 2024 — 東京.pdf"))
    assert event.filename == "Résumé 2024 — 東京.pdf"


@pytest.mark.parametrize("body", [b"{not json", b"\xff\xfe\x00", b""])
def test_malformed_json(body: bytes) -> None:
    with pytest.raises(events.InvalidEventError) as info:
        events.parse_file_requested(body)
    assert info.value.reason == "malformed_json"
    assert info.value.request_id is None


@pytest.mark.parametrize("body", [b"[1, 2]", b'"text"', b"42", b"null"])
def test_json_that_is_not_an_object(body: bytes) -> None:
    with pytest.raises(events.InvalidEventError) as info:
        events.parse_file_requested(body)
    assert info.value.reason == "invalid_schema"


@pytest.mark.parametrize("version", [2, 0, "1", None])
def test_unsupported_schema_version(version: object) -> None:
    body = _valid(schema_version=version)
    with pytest.raises(events.InvalidEventError) as info:
        events.parse_file_requested(json.dumps(body).encode())
    assert info.value.reason == "unsupported_schema_version"
    assert "schema_version" in str(info.value)
    # The id is still recovered, so the producer can be told.
    assert info.value.request_id == uuid.UUID(body["id"])


def test_invalid_schema_keeps_a_parseable_id() -> None:
    body = _valid(requester={"email": "nope"})
    with pytest.raises(events.InvalidEventError) as info:
        events.parse_file_requested(json.dumps(body).encode())
    assert info.value.request_id == uuid.UUID(body["id"])
    assert "requester.email" in str(info.value)


def test_invalid_schema_without_a_usable_id() -> None:
    body = _valid(id="nope", filename="a/b")
    with pytest.raises(events.InvalidEventError) as info:
        events.parse_file_requested(json.dumps(body).encode())
    assert info.value.request_id is None
    assert "id:" in str(info.value) and "filename:" in str(info.value)


def test_missing_required_fields_are_named() -> None:
    with pytest.raises(events.InvalidEventError) as info:
        events.parse_file_requested(b"{}")
    message = str(info.value)
    for field in ("id", "file_type"):
        assert f"{field}: Field required" in message
    assert "filename" not in message  # optional: the handler's declared name fills it


def test_naive_requested_at_is_rejected() -> None:
    with pytest.raises(ValidationError) as info:
        events.FileRequested.model_validate(_valid(requested_at="2024-01-01T00:00:00"))
    assert "requested_at" in _error_fields(info.value)


def test_events_are_frozen() -> None:
    event = events.FileRequested.model_validate(_valid())
    with pytest.raises(ValidationError):
        event.filename = "other.csv"  # type: ignore[misc]


def _depth(value: object) -> int:
    depth, level = 0, [value]
    while level:
        depth += 1
        level = [
            child
            for item in level
            if isinstance(item, dict | list)
            for child in (item.values() if isinstance(item, dict) else item)
        ]
    return depth - 1


def _assert_jsonb_safe(value: object) -> None:
    # What asyncpg's json codec and PostgreSQL's jsonb need: strict JSON text in UTF-8
    # without NUL, nested no deeper than the stated cap.
    text = json.dumps(value, allow_nan=False)
    json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8")
    assert "\\u0000" not in text
    assert _depth(value) <= events.MAX_JSON_DEPTH + 1


def _nested(levels: int) -> list[object]:
    root: list[object] = []
    inner = root
    for _ in range(levels):
        child: list[object] = []
        inner.append(child)
        inner = child
    return root


@pytest.mark.parametrize(
    "value",
    [
        {"a\x00": ["x\x00y", "\ud800", {"\udfff": float("nan")}]},
        {"inf": float("inf"), "ninf": float("-inf"), "big": 10**5000, "small": -(10**400)},
        {"deep": _nested(10_000)},
        {"bytes": b"\x00\xff", "obj": object(), "tuple": (1, "\x00")},
        {"number": strict_json.Unrepresentable("1e999")},
        {5: "int key", None: "none key"},
    ],
    ids=["nul-surrogates-nan", "numbers", "deep", "other-types", "placeholder", "keys"],
)
def test_storable_makes_anything_jsonb_safe(value: object) -> None:
    stored = events.storable(value)
    assert isinstance(stored, dict)
    _assert_jsonb_safe(stored)


def test_storable_keeps_what_it_can() -> None:
    stored = events.storable({"n": 1, "f": 1.5, "t": True, "z": None, "s": "ok", "l": [1]})
    assert stored == {"n": 1, "f": 1.5, "t": True, "z": None, "s": "ok", "l": [1]}
    assert events.storable({"x": "a\x00\ud800"}) == {"x": "a\ufffd\ufffd"}
    assert events.storable(float("nan")) == "nan"


def test_raw_body_is_a_short_storable_object() -> None:
    stored = events.raw_body(b"\x00\xff" * 5000)
    assert set(stored) == {"body"}
    assert isinstance(stored["body"], str) and len(stored["body"]) == events.RAW_BODY_CHARS
    _assert_jsonb_safe(stored)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"id": 1, "criteria": {"n": NaN, "s": "\\ud800", "z": "\\u0000"}}', None),
        (b"[" * 100_000 + b"]" * 100_000, {"body": "[" * events.RAW_BODY_CHARS}),
        (b"[1, 2]", {"body": "[1, 2]"}),
        (b"\xff{", {"body": "\ufffd{"}),
        (b'{"a": 1, "a": 2}', {"body": '{"a": 1, "a": 2}'}),
        (b'{"big": "' + b"x" * (events.MAX_STORED_BYTES + 1) + b'"}', None),
    ],
    ids=["unrepresentable", "deep", "array", "not-utf8", "duplicate", "too-big"],
)
def test_storable_body(body: bytes, expected: dict[str, object] | None) -> None:
    stored = events.storable_body(body)
    _assert_jsonb_safe(stored)
    if expected is not None:
        assert stored == expected
    elif body.startswith(b'{"id"'):
        assert stored == {"id": 1, "criteria": {"n": "NaN", "s": "\ufffd", "z": "\ufffd"}}
    else:
        assert set(stored) == {"body"} and len(str(stored["body"])) == events.RAW_BODY_CHARS


def test_error_messages_are_printable_and_capped() -> None:
    fields = {f"bad\u202e\x00{i}": 1 for i in range(500)}
    with pytest.raises(events.InvalidEventError) as info:
        events.parse_file_requested(json.dumps(_valid(**fields)).encode())
    message = str(info.value)
    assert len(message) <= events.MAX_ERROR_CHARS
    assert message.isprintable() or "\ufffd" in message
    assert "\x00" not in message and "\u202e" not in message


def test_schema_version_true_is_not_version_one() -> None:
    with pytest.raises(events.InvalidEventError) as info:
        events.parse_file_requested(json.dumps(_valid(schema_version=True)).encode())
    assert info.value.reason == "unsupported_schema_version"
    with pytest.raises(ValidationError, match="schema_version"):
        events.FileRequested.model_validate(_valid(schema_version=True))


def test_python_callers_still_pass_native_types() -> None:
    """Producers in Python pass UUID, datetime and Requester objects, not JSON strings."""
    from datetime import UTC, datetime

    event = events.FileRequested(
        id=uuid.uuid4(),
        file_type="blob",
        filename="a.csv",
        requested_at=datetime(2026, 1, 1, tzinfo=UTC),
        requester=events.Requester(email="ann@example.com", timezone="Europe/Paris"),
    )
    again = events.parse_file_requested(event.model_dump_json().encode())
    assert again == event
    with pytest.raises(ValidationError, match="requested_at"):
        events.FileRequested(
            id=uuid.uuid4(),
            file_type="blob",
            filename="a.csv",
            requested_at=datetime(1, 1, 1, tzinfo=UTC),
        )


def test_timezones_come_from_the_pinned_tzdata_package() -> None:
    from importlib.metadata import version
    from zoneinfo import ZoneInfo

    assert "Europe/Paris" in events.TIMEZONES and "UTC" in events.TIMEZONES
    schema = json.loads(events.json_schemas()["FileRequested.json"])
    timezone = schema["$defs"]["Requester"]["properties"]["timezone"]
    assert timezone["enum"] == list(events.TIMEZONES)
    assert timezone["x-bgworker-tzdata"] == version("tzdata")
    for name in events.TIMEZONES:  # every listed name can be loaded on this machine
        ZoneInfo(name)
