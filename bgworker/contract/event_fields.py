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
from bgworker.contract.patterns import (
    BIDI,
    BIDI_RE,
    CONTENT_TYPE_PATTERN,
    CONTENT_TYPE_RE,
    EMAIL_PATTERN,
    EMAIL_RE,
    FILE_TYPE_PATTERN,
    FILE_TYPE_RE,
    FILENAME_SEPARATORS,
    FILENAME_SEPARATORS_RE,
    LANGUAGE_PATTERN,
    LANGUAGE_RE,
    LINE_BREAKING,
    LINE_BREAKING_RE,
    MAX_CRITERIA_BYTES,
    MAX_CRITERIA_DEPTH,
    MAX_EMAIL_LENGTH,
    MAX_REQUESTED_YEAR,
    MIN_REQUESTED_YEAR,
    REQUESTED_AT_PATTERN,
    REQUESTED_AT_RE,
    SPACE,
    SPACE_RE,
    SPECIAL_USE_DOMAINS,
    SPECIAL_USE_PATTERN,
    SPECIAL_USE_RE,
    TIMEZONE_SET,
    TIMEZONES,
    UUID_PATTERN,
    UUID_RE,
)


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

NO_LINE_BREAKS: Final[dict[str, Any]] = {"not": {"pattern": LINE_BREAKING}}


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
    if SPACE_RE.search(value):
        return "must not start or end with white space"
    separators = set(FILENAME_SEPARATORS_RE.findall(value))
    if separators:
        return f"must not contain path separators or quotes (found {_found(separators)})"
    bidi = set(BIDI_RE.findall(value))
    if bidi:
        return f"must not contain bidirectional control characters (found {_found(bidi)})"
    return None


def _check_length(limit: int) -> Callable[[str], str | None]:
    return lambda value: f"must be at most {limit} characters" if len(value) > limit else None


def _check_email(value: str) -> str | None:
    if len(value) > MAX_EMAIL_LENGTH or not EMAIL_RE.fullmatch(value):
        return (
            "must be a plain ASCII address such as ann@example.com (no display name, "
            "no quoted local part; an internationalised domain in its xn-- form)"
        )
    if SPECIAL_USE_RE.search(value):
        return f"must not use a special-use domain ({', '.join(SPECIAL_USE_DOMAINS)})"
    return None


def _check_timezone(value: str) -> str | None:
    return None if value in TIMEZONE_SET else f"unknown IANA timezone {strict_json.show(value)}"


def _uuid(value: object) -> object:
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str) and UUID_RE.fullmatch(value):
        return uuid.UUID(value)
    raise error("must be a UUID in its hyphenated form, e.g. 0a2899be-dc23-450e-b95e-01b72f0b4be6")


def _requested_at(value: object) -> object:
    if isinstance(value, str):
        if not REQUESTED_AT_RE.fullmatch(value):
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
    *_text({"pattern": FILE_TYPE_PATTERN}, _pattern(FILE_TYPE_RE, "a registered handler name")),
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
                    {"pattern": f"^{SPACE}|{SPACE}$"},
                    {"pattern": FILENAME_SEPARATORS},
                    {"pattern": BIDI},
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
            or _pattern(CONTENT_TYPE_RE, "a media type (RFC 9110 section 8.3.1)")(v)
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
            "not": {"anyOf": [{"pattern": SPECIAL_USE_PATTERN}]},
        },
        _check_email,
    ),
]
Language = Annotated[
    str,
    *_text(
        {"maxLength": 35, "pattern": LANGUAGE_PATTERN},
        lambda v: (
            _check_length(35)(v) or _pattern(LANGUAGE_RE, "a BCP 47 tag such as 'en' or 'pt-BR'")(v)
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
