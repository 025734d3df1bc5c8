"""Field types of the event contract: each validates one rule and states the same rule in
the JSON Schema, so the schema a producer reads and the check the worker runs cannot drift.

``events`` builds its models from these types. Patterns are written in the subset of regex
that means the same in ECMA 262 (the dialect of JSON Schema) and Python's ``re``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import re
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Final

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BeforeValidator,
    JsonValue,
    PlainValidator,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from bgworker.contract import strict_json

# Handler input, measured as the UTF-8 bytes of its compact JSON (strict_json.json_size).
MAX_CRITERIA_BYTES: Final = 64 * 1024
# Levels of nesting in criteria; the criteria object itself is level 1.
MAX_CRITERIA_DEPTH: Final = 32
MAX_LIFETIME_SECONDS: Final = 366 * 24 * 3600

FILE_TYPE_PATTERN: Final = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
# RFC 9110 section 8.3.1: media-type = type "/" subtype parameters, parameters =
# *( OWS ";" OWS [ parameter ] ), parameter-value = token / quoted-string (5.6.2, 5.6.4).
# Narrowed to visible ASCII and SP: no HTAB or obs-text, so the value is safe in any header.
_TOKEN: Final = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED: Final = r'"(?:[ !#-\[\]-~]|\\[ -~])*"'
CONTENT_TYPE_PATTERN: Final = rf"^{_TOKEN}/{_TOKEN}(?: *;(?: *{_TOKEN}=(?:{_TOKEN}|{_QUOTED}))?)*$"
# Canonical 8-4-4-4-12 hex form (RFC 9562 section 4); hex is case-insensitive on input.
UUID_PATTERN: Final = (
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)
LANGUAGE_PATTERN: Final = r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$"
# RFC 3339 date-time, with the year as written in 1970..9998, 1 to 6 fractional digits and an
# offset within +-23:59. Converted to UTC it stays within Python's datetime (years 1..9999)
# and PostgreSQL's timestamptz: years 1 or 9999 with an extreme offset overflow when asyncpg
# converts them, which is why the range is part of the contract.
REQUESTED_AT_PATTERN: Final = (
    r"^(?:19[7-9][0-9]|[2-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])"
    r"-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
    r"[Tt](?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,6})?"
    r"(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])$"
)
MIN_REQUESTED_YEAR: Final = 1970
MAX_REQUESTED_YEAR: Final = 9998
# Addresses are ASCII (RFC 5321 without the SMTPUTF8 extension of RFC 6531, which relays
# need not support: an address they refuse would be retried by the outbox forever). An
# internationalised domain is accepted in its A-label form (xn--...). The local part is a
# dot-atom (RFC 5322 section 3.2.3; no quoted strings) of at most 64 octets, the domain has
# at least two labels, and the whole address fits the 254 octets of a forward path.
EMAIL_PATTERN: Final = (
    r"^(?=[^@]{1,64}@)[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
    r"[A-Za-z](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$"
)
MAX_EMAIL_LENGTH: Final = 254
# Special-use domains that never receive mail (RFC 6761 test/invalid/localhost, RFC 6762
# local, RFC 7686 onion, and arpa): the same list email-validator refuses by default.
SPECIAL_USE_DOMAINS: Final = ("arpa", "invalid", "local", "localhost", "onion", "test")
_SPECIAL_USE_PATTERN: Final = (
    r"\.(?:"
    + "|".join("".join(f"[{c.upper()}{c}]" for c in name) for name in SPECIAL_USE_DOMAINS)
    + r")$"
)
# Characters no field outside criteria may hold, because those fields reach HTTP or email
# headers or a one-line rendering: Unicode category Cc (U+0000-001F, U+007F-009F), Zl
# (U+2028) and Zp (U+2029). Written as regex escapes that mean the same in ECMA 262 (the
# dialect of JSON Schema patterns) and Python's re.
_LINE_BREAKING: Final = r"[\x00-\x1f\x7f-\x9f\u2028\u2029]"
# Bidirectional controls (Unicode UAX #9): in a filename they make `invoice<U+202E>fdp.exe`
# display as `invoiceexe.pdf`.
_BIDI: Final = r"[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]"
# Python's str.isspace() set, spelled out so the schema does not depend on the interpreter.
_SPACE: Final = r"[\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
_FILENAME_SEPARATORS: Final = r'[/\\"]'

LINE_BREAKING_RE: Final = re.compile(_LINE_BREAKING)
_BIDI_RE: Final = re.compile(_BIDI)
_FILENAME_SEPARATORS_RE: Final = re.compile(_FILENAME_SEPARATORS)
_SPACE_RE: Final = re.compile(rf"^{_SPACE}|{_SPACE}$")
UUID_RE: Final = re.compile(UUID_PATTERN)
_LANGUAGE_RE: Final = re.compile(LANGUAGE_PATTERN)
_EMAIL_RE: Final = re.compile(EMAIL_PATTERN)
_SPECIAL_USE_RE: Final = re.compile(_SPECIAL_USE_PATTERN)
_CONTENT_TYPE_RE: Final = re.compile(CONTENT_TYPE_PATTERN)
_FILE_TYPE_RE: Final = re.compile(FILE_TYPE_PATTERN)
_REQUESTED_AT_RE: Final = re.compile(REQUESTED_AT_PATTERN)

# IANA zone names from the `tzdata` package, pinned to one version in pyproject.toml: the
# machine's own tz database differs from host to host, and an enum built from it would make
# `bgworker schemas export --check` fail on the next machine. zoneinfo falls back to the same
# package when the system lacks a zone, so every listed name can be loaded.
TIMEZONES: Final = tuple(
    sorted(importlib.resources.files("tzdata").joinpath("zones").read_text("utf-8").split())
)
_TIMEZONE_SET: Final = frozenset(TIMEZONES)


def _tzdata_version() -> str:
    return importlib.metadata.version("tzdata")


def error(message: str) -> PydanticCustomError:
    # A custom error type keeps the message as written ("Value error, " is not prepended).
    return PydanticCustomError("bgworker_contract", message)


def _found(chars: set[str]) -> str:
    # Code points, with the character itself only when it is visible ASCII: a bidi control
    # or line separator copied into a log line would garble it.
    return ", ".join(
        f"{c!r} U+{ord(c):04X}" if "!" <= c <= "~" else f"U+{ord(c):04X}" for c in sorted(chars)
    )


# -- Field types: each validates and states the same rule in the schema -------------------

NO_LINE_BREAKS: Final[dict[str, Any]] = {"not": {"pattern": _LINE_BREAKING}}


def _text_rule(extra: Callable[[str], str | None] | None = None) -> Callable[[str], str]:
    """The rule every string outside criteria obeys (no Cc, Zl, Zp, lone surrogate), then
    ``extra``, which returns a problem or None."""

    def check(value: str) -> str:
        bad = set(LINE_BREAKING_RE.findall(value)) | set(strict_json.SURROGATE_RE.findall(value))
        if bad:
            raise error(
                f"must not contain control characters, line or paragraph separators "
                f"or lone surrogates (found {_found(bad)})"
            )
        problem = extra(value) if extra else None
        if problem:
            raise error(problem)
        return value

    return check


def _strict_str(value: object) -> object:
    if not isinstance(value, str):
        raise error(f"must be a string, not {type(value).__name__}")
    return value


def _pattern(regex: re.Pattern[str], what: str) -> Callable[[str], str | None]:
    return lambda value: None if regex.fullmatch(value) else f"must be {what}"


def _text(
    schema: dict[str, Any], extra: Callable[[str], str | None] | None = None
) -> tuple[Any, ...]:
    """Metadata for ``Annotated[str, ...]``: strict str, the text rule, and its schema."""
    full = {"type": "string", **schema}
    full["not"] = (
        {"anyOf": [NO_LINE_BREAKS["not"], *schema["not"]["anyOf"]]}
        if "not" in schema
        else NO_LINE_BREAKS["not"]
    )
    return (BeforeValidator(_strict_str), AfterValidator(_text_rule(extra)), WithJsonSchema(full))


def _check_filename(value: str) -> str | None:
    if not 1 <= len(value) <= 255:
        return "must be 1 to 255 characters long"
    if value in {".", ".."}:
        return "must be a plain name, not '.' or '..'"
    if _SPACE_RE.search(value):
        return "must not start or end with white space"
    separators = set(_FILENAME_SEPARATORS_RE.findall(value))
    if separators:
        return f"must not contain path separators or quotes (found {_found(separators)})"
    bidi = set(_BIDI_RE.findall(value))
    if bidi:
        return f"must not contain bidirectional control characters (found {_found(bidi)})"
    return None


def _check_length(limit: int) -> Callable[[str], str | None]:
    return lambda value: f"must be at most {limit} characters" if len(value) > limit else None


def _check_email(value: str) -> str | None:
    if len(value) > MAX_EMAIL_LENGTH or not _EMAIL_RE.fullmatch(value):
        return (
            "must be a plain ASCII address such as ann@example.com (no display name, "
            "no quoted local part; an internationalised domain in its xn-- form)"
        )
    if _SPECIAL_USE_RE.search(value):
        return f"must not use a special-use domain ({', '.join(SPECIAL_USE_DOMAINS)})"
    return None


def _check_timezone(value: str) -> str | None:
    return None if value in _TIMEZONE_SET else f"unknown IANA timezone {strict_json.show(value)}"


def _uuid(value: object) -> object:
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str) and UUID_RE.fullmatch(value):
        return uuid.UUID(value)
    raise error("must be a UUID in its hyphenated form, e.g. 0a2899be-dc23-450e-b95e-01b72f0b4be6")


def _requested_at(value: object) -> object:
    if isinstance(value, str):
        if not _REQUESTED_AT_RE.fullmatch(value):
            raise error(
                f"must be an RFC 3339 date-time with an offset, year "
                f"{MIN_REQUESTED_YEAR}-{MAX_REQUESTED_YEAR}, at most 6 fractional digits"
            )
    elif isinstance(value, datetime):
        if not MIN_REQUESTED_YEAR <= value.year <= MAX_REQUESTED_YEAR:
            raise error(f"year must be {MIN_REQUESTED_YEAR}-{MAX_REQUESTED_YEAR}")
    else:
        raise error("must be an RFC 3339 date-time string")
    return value


def _json_integer(value: object) -> object:
    # JSON Schema's "integer" is a number with no fractional part, so 60.0 counts; true does
    # not (pydantic's lax int would take it as 1), nor does "60".
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise error("must be an integer")
    if isinstance(value, float) and not value.is_integer():
        raise error("must be an integer")
    return int(value)


def _check_criteria(value: object) -> dict[str, JsonValue]:
    # The whole validation of criteria (pydantic's JsonValue check costs a Python call per
    # value; this walk does the same and more in one pass).
    if not isinstance(value, dict):
        raise error("must be a JSON object")
    problems = strict_json.unstorable(value, max_depth=MAX_CRITERIA_DEPTH)
    if problems:
        raise error("; ".join(f"{p} (at {w})" if w else p for w, p in problems))
    size = strict_json.json_size(value)
    if size > MAX_CRITERIA_BYTES:
        raise error(f"{size} bytes as JSON; the limit is {MAX_CRITERIA_BYTES}")
    return value  # every key and value checked above


CRITERIA_VALUE_SCHEMA: Final[dict[str, Any]] = {
    "description": (
        "Any JSON value; strings and keys without NUL (U+0000), which PostgreSQL text "
        "cannot hold. Numbers must be finite doubles (I-JSON)."
    ),
    "anyOf": [
        {"type": "string", "not": {"pattern": r"\x00"}},
        {"type": ["number", "boolean", "null"]},
        {"type": "array", "items": {"$ref": "#/$defs/CriteriaValue"}},
        {
            "type": "object",
            "propertyNames": {"not": {"pattern": r"\x00"}},
            "additionalProperties": {"$ref": "#/$defs/CriteriaValue"},
        },
    ],
}

Uuid = Annotated[
    uuid.UUID,
    BeforeValidator(_uuid),
    WithJsonSchema({"type": "string", "format": "uuid", "pattern": UUID_PATTERN, **NO_LINE_BREAKS}),
]
FileType = Annotated[
    str,
    *_text({"pattern": FILE_TYPE_PATTERN}, _pattern(_FILE_TYPE_RE, "a registered handler name")),
]
Filename = Annotated[
    str,
    *_text(
        {
            "minLength": 1,
            "maxLength": 255,
            "not": {
                "anyOf": [
                    {"enum": [".", ".."]},
                    {"pattern": f"^{_SPACE}|{_SPACE}$"},
                    {"pattern": _FILENAME_SEPARATORS},
                    {"pattern": _BIDI},
                ]
            },
        },
        _check_filename,
    ),
]
ContentType = Annotated[
    str,
    *_text(
        {"maxLength": 255, "pattern": CONTENT_TYPE_PATTERN},
        lambda v: (
            _check_length(255)(v)
            or _pattern(_CONTENT_TYPE_RE, "a media type (RFC 9110 section 8.3.1)")(v)
        ),
    ),
]
Description = Annotated[str, *_text({"maxLength": 1000}, _check_length(1000))]
Email = Annotated[
    str,
    *_text(
        {
            "format": "email",
            "maxLength": MAX_EMAIL_LENGTH,
            "pattern": EMAIL_PATTERN,
            "not": {"anyOf": [{"pattern": _SPECIAL_USE_PATTERN}]},
        },
        _check_email,
    ),
]
Language = Annotated[
    str,
    *_text(
        {"maxLength": 35, "pattern": LANGUAGE_PATTERN},
        lambda v: (
            _check_length(35)(v)
            or _pattern(_LANGUAGE_RE, "a BCP 47 tag such as 'en' or 'pt-BR'")(v)
        ),
    ),
]
Timezone = Annotated[
    str,
    *_text({"enum": list(TIMEZONES), "x-bgworker-tzdata": _tzdata_version()}, _check_timezone),
]
RequesterId = Annotated[
    str,
    *_text(
        {"minLength": 1, "maxLength": 200},
        lambda v: "must be 1 to 200 characters long" if not 1 <= len(v) <= 200 else None,
    ),
]
# A request's place in the work queue (messaging.wire maps each to an AMQP priority).
PRIORITY_LEVELS: Final = ("low", "normal", "high")
Priority = Annotated[
    str,
    *_text(
        {"enum": list(PRIORITY_LEVELS)},
        lambda v: None if v in PRIORITY_LEVELS else f"must be one of {', '.join(PRIORITY_LEVELS)}",
    ),
]
# The fairness key (caps and quotas count per tenant). Short: it is a metrics label (for
# the busiest tenants) and a console column, and no line breaks like every field that
# reaches a header or a log line.
MAX_TENANT_LENGTH: Final = 100
Tenant = Annotated[
    str,
    *_text(
        {"minLength": 1, "maxLength": MAX_TENANT_LENGTH},
        lambda v: (
            f"must be 1 to {MAX_TENANT_LENGTH} characters long"
            if not 1 <= len(v) <= MAX_TENANT_LENGTH
            else None
        ),
    ),
]


# -- Values that are not text ------------------------------------------------------------------

Criteria = Annotated[
    dict[str, JsonValue],
    PlainValidator(_check_criteria),
    WithJsonSchema(
        {
            "type": "object",
            "propertyNames": {"not": {"pattern": r"\x00"}},
            # The recursive value schema is added by events.json_schemas(): pydantic resolves
            # every $ref it sees here against its own definitions.
            "x-bgworker-max-json-bytes": MAX_CRITERIA_BYTES,
            "x-bgworker-max-depth": MAX_CRITERIA_DEPTH,
        }
    ),
]
RequestedAt = Annotated[
    AwareDatetime,
    BeforeValidator(_requested_at),
    WithJsonSchema(
        {
            "type": "string",
            "format": "date-time",
            "pattern": REQUESTED_AT_PATTERN,
            "not": NO_LINE_BREAKS["not"],
        }
    ),
]
# The bounds (ge/le) are on the model's Field, next to the default they bound.
JsonInteger = Annotated[int, BeforeValidator(_json_integer)]
