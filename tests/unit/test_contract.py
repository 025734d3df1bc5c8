"""The schema is the contract: a JSON Schema validator and the worker agree on every case.

Each case of ``tests/contract/cases.json`` (notation in tests/contract/README.md) is judged
by the committed ``schemas/FileRequested.json`` under a real draft 2020-12 validator with
format assertion on, and by ``events.parse_file_requested``; both must give the expected
verdict. Then property-based tests feed arbitrary bytes, arbitrary JSON and mutations of a
valid event to the parser: it raises InvalidEventError with a known reason, or returns an
event that PostgreSQL and headers can carry.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event as hypothesis_event
from hypothesis import example, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, ValidationError, validators

from bgworker.contract import events
from tests import helpers

ROOT = Path(__file__).resolve().parents[2]
CORPUS = json.loads((ROOT / "tests/contract/cases.json").read_text(encoding="utf-8"))
SCHEMA = json.loads((ROOT / "schemas/FileRequested.json").read_text(encoding="utf-8"))
CASES: list[dict[str, Any]] = CORPUS["cases"]


# -- Building the bodies ---------------------------------------------------------------------


def _expand(value: Any, raws: list[str]) -> Any:
    """Resolve $repeat now; replace $raw/$raw_nest by a marker string filled in later."""
    if isinstance(value, dict):
        if "$repeat" in value:
            text, times = value["$repeat"]
            return text * times
        if "$raw" in value or "$raw_nest" in value:
            n = value.get("$raw_nest")
            raws.append(value["$raw"] if n is None else "[" * n + "]" * n)
            return f"@@raw{len(raws) - 1}@@"
        return {k: _expand(v, raws) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, raws) for v in value]
    return value


def body_of(case: dict[str, Any]) -> bytes:
    patch = dict(case["patch"])
    if "$body" in patch:
        return str(patch["$body"]).encode()
    if "$body_hex" in patch:
        return bytes.fromhex(patch["$body_hex"])
    event = json.loads(json.dumps(CORPUS["base"]))
    pad: int = patch.pop("$pad", 0)
    if "$only" in patch:
        keep = patch.pop("$only")
        event = {k: v for k, v in event.items() if k in keep}
    for name in patch.pop("$drop", []):
        del event[name]
    raws: list[str] = []
    for path, value in patch.items():
        *parents, leaf = path.split(".")
        target = event
        for part in parents:
            target = target[part]
        target[leaf] = _expand(value, raws)
    text = json.dumps(event, ensure_ascii=False)
    for i, raw in enumerate(raws):
        text = text.replace(f'"@@raw{i}@@"', raw)
    return (" " * pad + text).encode()


# -- The schema side ---------------------------------------------------------------------


class NotIJsonError(ValueError):
    """The body is not I-JSON (RFC 7493), so no schema validator is ever asked about it."""


def _no_constants(text: str) -> Any:
    raise NotIJsonError(f"{text} is not JSON")


def _finite_float(text: str) -> float:
    if not math.isfinite(value := float(text)):
        raise NotIJsonError(f"{text} does not fit a double")
    return value


def _finite_int(text: str) -> int:
    value = int(text)  # ValueError past 4300 digits: not representable either
    float(value)  # OverflowError: no double holds it
    return value


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len({k for k, _ in pairs}) != len(pairs):
        raise NotIJsonError("duplicate name")
    return dict(pairs)


def _strings(value: Any) -> Iterator[str]:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def strict_json(body: bytes) -> Any:
    """A strict parser in front of the validator: UTF-8, numbers a double holds, unique
    names, no lone surrogates (I-JSON), and the schema's x-bgworker-max-body-bytes."""
    if len(body) > SCHEMA["x-bgworker-max-body-bytes"]:
        raise NotIJsonError("body too large")
    try:
        value = json.loads(
            body.decode("utf-8"),
            parse_constant=_no_constants,
            parse_float=_finite_float,
            parse_int=_finite_int,
            object_pairs_hook=_unique,
        )
    except (ValueError, OverflowError, RecursionError) as exc:
        raise NotIJsonError(str(exc)) from None
    for text in _strings(value):
        if any(unicodedata.category(c) == "Cs" for c in text):
            raise NotIJsonError("lone surrogate")
    return value


def _depth(value: Any) -> int:
    if isinstance(value, dict | list):
        children = value.values() if isinstance(value, dict) else value
        return 1 + max((_depth(child) for child in children), default=0)
    return 0


def _max_json_bytes(validator: Any, limit: int, instance: Any, schema: Any) -> Iterator[Any]:
    # The measure docs/reference.md states: UTF-8 bytes of the compact JSON, non-ASCII unescaped.
    size = len(json.dumps(instance, separators=(",", ":"), ensure_ascii=False).encode())
    if size > limit:
        yield ValidationError(f"{size} bytes as JSON; the limit is {limit}")


def _max_depth(validator: Any, limit: int, instance: Any, schema: Any) -> Iterator[Any]:
    if _depth(instance) > limit:
        yield ValidationError(f"nested deeper than {limit} levels")


X_KEYWORDS = {"x-bgworker-max-json-bytes": _max_json_bytes, "x-bgworker-max-depth": _max_depth}
# The validator a producer gets from the schema alone, and one that also implements the
# documented x-bgworker-* keywords (what JSON Schema cannot say).
PLAIN = Draft202012Validator(SCHEMA, format_checker=Draft202012Validator.FORMAT_CHECKER)
# types-jsonschema leaves validators.extend unannotated.
FULL = validators.extend(Draft202012Validator, X_KEYWORDS)(  # type: ignore[no-untyped-call]
    SCHEMA, format_checker=Draft202012Validator.FORMAT_CHECKER
)


def schema_accepts(validator: Any, body: bytes) -> bool:
    try:
        instance = strict_json(body)
    except NotIJsonError:
        return False
    return bool(validator.is_valid(instance))


# -- The corpus ------------------------------------------------------------------------------


def test_the_schema_and_the_formats_are_really_checked() -> None:
    Draft202012Validator.check_schema(SCHEMA)
    # Without rfc3339-validator jsonschema silently skips date-time: make sure it is there.
    assert {"date-time", "uuid", "email"} <= set(Draft202012Validator.FORMAT_CHECKER.checkers)
    assert not PLAIN.is_valid({**CORPUS["base"], "requested_at": "2024-13-01T00:00:00Z"})


def test_the_corpus_is_big_enough() -> None:
    good = [c for c in CASES if c["expect"] == "accept"]
    bad = [c for c in CASES if c["expect"] != "accept"]
    assert len(good) >= 12 and len(bad) >= 30
    assert len({c["name"] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_schema_and_worker_agree(case: dict[str, Any]) -> None:
    body = body_of(case)
    expected_ok = case["expect"] == "accept"

    # The worker.
    try:
        events.parse_file_requested(body)
        worker_verdict = "accept"
        message = ""
    except events.InvalidEventError as exc:
        worker_verdict = exc.reason
        message = str(exc)
    assert worker_verdict == case["expect"], message
    if not expected_ok:
        field = re.escape(case["field"])
        assert re.search(rf"(^|; ){field}[.:]", message), message

    # The strict JSON parser in front of any schema validator.
    try:
        strict_json(body)
        is_strict_json = True
    except NotIJsonError:
        is_strict_json = False
    assert is_strict_json is case.get("strict_json", True)

    # The schema, with the x-bgworker-* keywords implemented; and without them, which
    # differs exactly on the cases only such a keyword decides.
    assert schema_accepts(FULL, body) is expected_ok
    only_by_x_keyword = "x_keyword" in case
    assert schema_accepts(PLAIN, body) is (expected_ok or only_by_x_keyword)
    if only_by_x_keyword:
        assert case["x_keyword"] in json.dumps(SCHEMA)


# -- Property-based: anything in, a known outcome out ----------------------------------------

HEADER_FIELDS = ("file_type", "filename", "content_type", "description")
UNSAFE_CATEGORIES = {"Cc", "Zl", "Zp", "Cs"}


def assert_carriable(event: events.FileRequested) -> None:
    """What PostgreSQL (jsonb, text, timestamptz) and headers need of an accepted event."""
    dumped = event.model_dump(mode="json")
    text = json.dumps(dumped, allow_nan=False, ensure_ascii=False)
    text.encode("utf-8")  # strict: raises on a lone surrogate
    assert "\x00" not in text
    assert "\\u0000" not in text
    # filename and content_type may be absent (None): the handler's declared ones are used.
    values = [v for name in HEADER_FIELDS if (v := getattr(event, name)) is not None]
    if event.requester is not None:
        values += [v for v in event.requester.model_dump().values() if isinstance(v, str)]
    for value in values:
        assert not {unicodedata.category(c) for c in value} & UNSAFE_CATEGORIES, value
    assert 1970 <= event.requested_at.year <= 9998
    # The UTC conversion asyncpg does must not overflow.
    event.requested_at.astimezone(UTC)


def parse_outcome(body: bytes) -> events.FileRequested | None:
    try:
        event = events.parse_file_requested(body)
    except events.InvalidEventError as exc:
        assert exc.reason in events.REASONS
        message = str(exc)
        assert message and len(message) <= events.MAX_ERROR_CHARS
        message.encode("utf-8")  # the message is stored and sent as a header too
        assert not {unicodedata.category(c) for c in message} & UNSAFE_CATEGORIES
        return None
    assert_carriable(event)
    return event


@settings(max_examples=helpers.examples(300), deadline=None)
@given(st.binary(max_size=512))
@example(b"[" * 100_000)
@example(b'{"a": ' * 50_000)
@example(b"\xed\xa0\x80")  # a surrogate encoded as UTF-8: not UTF-8
def test_any_bytes(body: bytes) -> None:
    parse_outcome(body)


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@settings(max_examples=helpers.examples(300), deadline=None)
@given(json_values)
def test_any_json_document(value: Any) -> None:
    # json.dumps writes NaN/Infinity and lone surrogates as escapes: the parser sees them.
    parse_outcome(json.dumps(value).encode())


VALID = json.loads(body_of(CASES[0]))
field_values = (
    json_values
    | st.text(alphabet=st.characters(codec=None), max_size=40)
    | st.sampled_from(["", ".", "..", "\u2028", "\u202e", "\r\n", "\x00", "1969-01-01T00:00Z"])
)
# Values a producer might well send for each field, so that a fair share is accepted.
PLAUSIBLE: dict[str, list[Any]] = {
    "schema_version": [1, 1.0],
    "id": ["0a2899be-dc23-450e-b95e-01b72f0b4be6", "0A2899BE-DC23-450E-B95E-01B72F0B4BE6"],
    "file_type": ["blob", "login_events", "a.b-c_d"],
    "criteria": [{}, {"rows": 1}, {"q": ["x", None, 1.5]}],
    "filename": ["report.csv", "Résumé 東京.pdf", "a b.txt"],
    "content_type": ["text/csv", 'text/plain; charset="utf-8"', "application/json"],
    "description": ["", "Logins of November"],
    "requester": [None, {}, {"email": "ann@example.com"}],
    "requested_at": ["2024-02-29T12:00:00+01:00", "1970-01-01T00:00:00Z"],
    "lifetime_seconds": [60, 3600.0],
    "requester.id": ["42", "ann"],
    "requester.email": ["ann@example.com", "a.b+c@xn--exmple-cua.org", None],
    "requester.language": ["en", "pt-BR"],
    "requester.timezone": ["UTC", "Europe/Paris", "America/Argentina/Buenos_Aires"],
}
FIELDS = [*VALID, *(f"requester.{k}" for k in VALID["requester"])]


@settings(max_examples=helpers.examples(300), deadline=None)
@given(
    st.lists(st.sampled_from(FIELDS), unique=True, max_size=3).flatmap(
        lambda keys: st.fixed_dictionaries(
            {k: st.sampled_from(PLAUSIBLE[k]) | field_values for k in keys}
        )
    )
)
def test_mutations_of_a_valid_event(mutations: dict[str, Any]) -> None:
    event = json.loads(json.dumps(VALID))
    for path, value in mutations.items():
        *parents, leaf = path.split(".")
        target = event
        for part in parents:
            if not isinstance(target.get(part), dict):
                target[part] = {}
            target = target[part]
        target[leaf] = value
    body = json.dumps(event).encode()
    parsed = parse_outcome(body)
    hypothesis_event("accepted" if parsed is not None else "rejected")
    # The schema agrees with the worker on every generated body a schema validator can see.
    try:
        strict_json(body)
    except NotIJsonError:
        assert parsed is None
        return
    assert schema_accepts(FULL, body) is (parsed is not None), (mutations, parsed)
