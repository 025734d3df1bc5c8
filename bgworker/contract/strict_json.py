"""Strict JSON: decode untrusted bytes without recursion, and make any value storable.

I-JSON (RFC 7493) is the bar: UTF-8, no duplicate names, no lone surrogates, numbers that an
IEEE 754 double holds. PostgreSQL sets the rest: jsonb refuses NaN, Infinity and NUL
(U+0000) in text, and asyncpg cannot encode a lone surrogate. ``decode`` finds what breaks
these rules and ``unstorable`` says where; ``storable`` repairs a value instead, for
recording what was rejected.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from typing import Any, Final

from pydantic import JsonValue

# Nesting of a whole body, checked before parsing: far below the interpreter's recursion
# limit (json.loads and pydantic recurse).
MAX_DEPTH: Final = 64
RAW_BODY_CHARS: Final = 2000
SURROGATE_RE: Final = re.compile(r"[\ud800-\udfff]")


class DecodeError(ValueError):
    """The bytes are not strict JSON; the message says why, printable and short."""


def show(value: object, limit: int = 60) -> str:
    """A short, printable, storable rendering of any value for error messages."""
    text = ascii(value) if not isinstance(value, Unrepresentable) else value.text
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Unrepresentable:
    """A JSON number with no finite IEEE 754 double: NaN, Infinity, 1e999, a 5,000-digit
    integer. jsonb refuses the first ones, Python refuses to print the last; I-JSON (RFC
    7493 section 2.2) asks for numbers a double can hold. Kept as the parser's placeholder so
    the error can name the field."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"

    def __repr__(self) -> str:
        return f"Unrepresentable({self.text!r})"


class _DuplicateKeyError(ValueError):
    pass


def _parse_int(text: str) -> int | Unrepresentable:
    # Checked before int(): Python refuses to convert more than 4300 digits (ValueError).
    if len(text) > 310:
        return Unrepresentable(text)
    number = int(text)
    try:
        float(number)
    except OverflowError:
        return Unrepresentable(text)
    return number


def _parse_float(text: str) -> float | Unrepresentable:
    number = float(text)
    return number if math.isfinite(number) else Unrepresentable(text)


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Duplicate names are legal JSON that parsers resolve differently (RFC 8259 section 4):
    # a producer's validator may see the first value and the worker the last.
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise _DuplicateKeyError(f"duplicate key {show(dup)}")
    return out


# A JSON string literal, written as an unrolled loop (no alternation per character).
_STRING_RE: Final = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_STEP: Final = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}
_NOT_BRACKETS: Final = bytes(b for b in range(256) if b not in _STEP)


def too_deep(text: str, limit: int) -> bool:
    """Whether JSON text nests deeper than ``limit``, found without recursion (a 100,000
    deep body would raise RecursionError inside json.loads)."""
    if text.count("[") + text.count("{") <= limit:
        return False  # the usual event: a handful of brackets
    # Outside string literals valid JSON is ASCII; keep its brackets only. The running sum
    # of +1/-1 is the depth; translate, map and accumulate keep the loops in C.
    outside = _STRING_RE.sub('""', text).encode("ascii", "ignore")
    steps = map(_STEP.__getitem__, outside.translate(None, _NOT_BRACKETS))
    return max(itertools.accumulate(steps), default=0) > limit


def decode(body: bytes, max_depth: int = MAX_DEPTH) -> object:
    """Parse bytes as strict JSON (RFC 8259 in UTF-8, no duplicate names, nesting at most
    ``max_depth``). Numbers a double cannot hold come back as ``Unrepresentable``, so the
    caller can name their place. Raises DecodeError and nothing else."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"not UTF-8 ({exc.reason})") from None
    if too_deep(text, max_depth):
        raise DecodeError(f"JSON nested deeper than {max_depth} levels")
    try:
        return json.loads(
            text,
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=Unrepresentable,
            object_pairs_hook=_object,
        )
    except _DuplicateKeyError as exc:
        raise DecodeError(str(exc)) from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise DecodeError(f"not JSON ({exc})") from None


def path(parent: str, key: object) -> str:
    """``parent.key``, with an unusual key escaped (keys end up in error texts)."""
    key_text = str(key) if isinstance(key, int) else key if _plain_key(key) else show(key)
    return f"{parent}.{key_text}" if parent else str(key_text)


def _plain_key(key: object) -> bool:
    return isinstance(key, str) and 0 < len(key) <= 60 and key.isprintable()


def _string_problem(text: str) -> str | None:
    if "\x00" in text:
        return "must not contain NUL characters (U+0000)"
    if SURROGATE_RE.search(text):
        return "must not contain lone UTF-16 surrogates (U+D800-DFFF)"
    return None


# A place in a value as a linked list (parent, key), turned into text only for an error.
_Where = tuple["_Where", object] | None


def _spell(where: _Where, root: str) -> str:
    keys: list[object] = []
    while where is not None:
        where, key = where
        keys.append(key)
    spelled = root
    for key in reversed(keys):
        spelled = path(spelled, key)
    return spelled


def unstorable(
    value: object, root: str = "", max_depth: int | None = None
) -> list[tuple[str, str]]:
    """Where a JSON-like value holds what PostgreSQL or strict JSON cannot carry: a NUL or a
    lone surrogate in a string or key, a non-finite number, a key that is not a string, a
    type JSON does not have, or nesting deeper than ``max_depth``. (path, problem) pairs, at
    most 10; iterative, so any depth is safe."""
    problems: list[tuple[str, str]] = []
    stack: list[tuple[object, _Where, int]] = [(value, None, 1)]
    while stack and len(problems) < 10:
        item, where, depth = stack.pop()
        if isinstance(item, str):
            if problem := _string_problem(item):
                problems.append((_spell(where, root), problem))
        elif isinstance(item, dict | list) and max_depth is not None and depth > max_depth:
            problems.append((_spell(where, root), f"nested deeper than {max_depth} levels"))
        elif isinstance(item, dict):
            for key, child in item.items():
                problem = _string_problem(key) if isinstance(key, str) else "is not a string"
                if problem:
                    problems.append((_spell((where, key), root), f"key {problem}"))
                stack.append((child, (where, key), depth + 1))
        elif isinstance(item, list):
            stack.extend((child, (where, i), depth + 1) for i, child in enumerate(item))
        elif problem := _scalar_problem(item):
            problems.append((_spell(where, root), problem))
    problems.sort()
    return problems


def _scalar_problem(item: object) -> str | None:
    if item is None or isinstance(item, bool | int):
        return None
    if isinstance(item, float):
        return None if math.isfinite(item) else f"{item} is not a finite number"
    if isinstance(item, Unrepresentable):
        return f"{item.text} is not a finite number (I-JSON, RFC 7493)"
    return f"{type(item).__name__} is not a JSON value"


def json_size(value: object) -> int:
    """UTF-8 bytes of the compact JSON text (no whitespace, non-ASCII not escaped): the
    measure of ``x-bgworker-max-json-bytes``."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def storable(value: object, _depth: int = 1) -> JsonValue:
    """``value`` (parsed or not) as a JSON value PostgreSQL jsonb accepts: NUL and lone
    surrogates become U+FFFD, non-finite or oversized numbers their text, other objects
    their repr, and containers nested deeper than MAX_DEPTH a marker string."""
    if isinstance(value, str):
        return SURROGATE_RE.sub("\ufffd", value.replace("\x00", "\ufffd"))
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        try:
            float(value)
        except OverflowError:
            # str() would refuse past 4300 digits; log10(2) gives the count closely enough.
            return f"<integer of about {int(value.bit_length() * 0.30103) + 1} digits>"
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, Unrepresentable):
        return value.text
    if isinstance(value, dict | list | tuple):
        if _depth > MAX_DEPTH:
            return f"<nested deeper than {MAX_DEPTH} levels>"
        if isinstance(value, dict):
            return {str(storable(str(k))): storable(v, _depth + 1) for k, v in value.items()}
        return [storable(v, _depth + 1) for v in value]
    return storable(show(value, 200))


def raw_body(body: bytes) -> dict[str, JsonValue]:
    """A body that is not a JSON object, as a storable object: its first RAW_BODY_CHARS
    characters, decoded as UTF-8 with U+FFFD for what does not decode (and for NUL)."""
    text = body[: RAW_BODY_CHARS * 4].decode("utf-8", "replace")[:RAW_BODY_CHARS]
    return {"body": text.replace("\x00", "\ufffd")}
