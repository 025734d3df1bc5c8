"""The event contract: what producers publish and what bgworker announces.

These pydantic models are the source of truth for ``schemas/*.json`` (``bgworker schemas
export``); a test fails when the committed files drift from them. Every rule the worker
enforces on a ``FileRequested`` is stated in its schema: as a JSON Schema keyword where one
exists, else as a documented ``x-bgworker-*`` keyword (README, "The event contract").

The rules exist because an accepted event must be *carried* all the way: stored in
PostgreSQL (text, jsonb, timestamptz), put in HTTP and email headers, and rendered in an
email. An event that passes validation but cannot be carried fails later, where it is far
more expensive (held, redelivered, retried by the outbox forever).
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import json
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    PlainValidator,
    ValidationError,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from bgworker import strict_json

SCHEMA_VERSION: Final = 1
# Handler input, measured as the UTF-8 bytes of its compact JSON (strict_json.json_size).
MAX_CRITERIA_BYTES: Final = 64 * 1024
# Levels of nesting in criteria; the criteria object itself is level 1.
MAX_CRITERIA_DEPTH: Final = 32
# Nesting of a whole body, checked before parsing: above criteria's limit plus the levels
# around it, so a deep criteria value is reported by its field rather than as bad JSON.
MAX_JSON_DEPTH: Final = strict_json.MAX_DEPTH
# A valid body is at most ~70 KiB compact; this leaves room for pretty-printing and bounds
# the work spent on any message.
MAX_BODY_BYTES: Final = 1024 * 1024
MAX_LIFETIME_SECONDS: Final = 366 * 24 * 3600
MAX_ERROR_CHARS: Final = 2000
# Reasons an InvalidEventError carries (the dead letter's x-bgworker-reason).
REASONS: Final = frozenset({"malformed_json", "invalid_schema", "unsupported_schema_version"})

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

_LINE_BREAKING_RE: Final = re.compile(_LINE_BREAKING)
_BIDI_RE: Final = re.compile(_BIDI)
_FILENAME_SEPARATORS_RE: Final = re.compile(_FILENAME_SEPARATORS)
_SPACE_RE: Final = re.compile(rf"^{_SPACE}|{_SPACE}$")
_UUID_RE: Final = re.compile(UUID_PATTERN)
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


def _now() -> datetime:
    return datetime.now(UTC)


def _error(message: str) -> PydanticCustomError:
    # A custom error type keeps the message as written ("Value error, " is not prepended).
    return PydanticCustomError("bgworker_contract", message)


def _found(chars: set[str]) -> str:
    # Code points, with the character itself only when it is visible ASCII: a bidi control
    # or line separator copied into a log line would garble it.
    return ", ".join(
        f"{c!r} U+{ord(c):04X}" if "!" <= c <= "~" else f"U+{ord(c):04X}" for c in sorted(chars)
    )


# -- Field types: each validates and states the same rule in the schema -------------------

_NO_LINE_BREAKS: Final[dict[str, Any]] = {"not": {"pattern": _LINE_BREAKING}}


def _text_rule(extra: Callable[[str], str | None] | None = None) -> Callable[[str], str]:
    """The rule every string outside criteria obeys (no Cc, Zl, Zp, lone surrogate), then
    ``extra``, which returns a problem or None."""

    def check(value: str) -> str:
        bad = set(_LINE_BREAKING_RE.findall(value)) | set(strict_json.SURROGATE_RE.findall(value))
        if bad:
            raise _error(
                f"must not contain control characters, line or paragraph separators "
                f"or lone surrogates (found {_found(bad)})"
            )
        problem = extra(value) if extra else None
        if problem:
            raise _error(problem)
        return value

    return check


def _strict_str(value: object) -> object:
    if not isinstance(value, str):
        raise _error(f"must be a string, not {type(value).__name__}")
    return value


def _pattern(regex: re.Pattern[str], what: str) -> Callable[[str], str | None]:
    return lambda value: None if regex.fullmatch(value) else f"must be {what}"


def _text(
    schema: dict[str, Any], extra: Callable[[str], str | None] | None = None
) -> tuple[Any, ...]:
    """Metadata for ``Annotated[str, ...]``: strict str, the text rule, and its schema."""
    full = {"type": "string", **schema}
    full["not"] = (
        {"anyOf": [_NO_LINE_BREAKS["not"], *schema["not"]["anyOf"]]}
        if "not" in schema
        else _NO_LINE_BREAKS["not"]
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
    if isinstance(value, str) and _UUID_RE.fullmatch(value):
        return uuid.UUID(value)
    raise _error("must be a UUID in its hyphenated form, e.g. 0a2899be-dc23-450e-b95e-01b72f0b4be6")


def _requested_at(value: object) -> object:
    if isinstance(value, str):
        if not _REQUESTED_AT_RE.fullmatch(value):
            raise _error(
                f"must be an RFC 3339 date-time with an offset, year "
                f"{MIN_REQUESTED_YEAR}-{MAX_REQUESTED_YEAR}, at most 6 fractional digits"
            )
    elif isinstance(value, datetime):
        if not MIN_REQUESTED_YEAR <= value.year <= MAX_REQUESTED_YEAR:
            raise _error(f"year must be {MIN_REQUESTED_YEAR}-{MAX_REQUESTED_YEAR}")
    else:
        raise _error("must be an RFC 3339 date-time string")
    return value


def _json_integer(value: object) -> object:
    # JSON Schema's "integer" is a number with no fractional part, so 60.0 counts; true does
    # not (pydantic's lax int would take it as 1), nor does "60".
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _error("must be an integer")
    if isinstance(value, float) and not value.is_integer():
        raise _error("must be an integer")
    return int(value)


def _schema_version(value: object) -> object:
    if isinstance(value, bool):
        raise _error(f"must be {SCHEMA_VERSION}, not a boolean")
    return value


def _check_criteria(value: object) -> dict[str, JsonValue]:
    # The whole validation of criteria (pydantic's JsonValue check costs a Python call per
    # value; this walk does the same and more in one pass).
    if not isinstance(value, dict):
        raise _error("must be a JSON object")
    problems = strict_json.unstorable(value, max_depth=MAX_CRITERIA_DEPTH)
    if problems:
        raise _error("; ".join(f"{p} (at {w})" if w else p for w, p in problems))
    size = strict_json.json_size(value)
    if size > MAX_CRITERIA_BYTES:
        raise _error(f"{size} bytes as JSON; the limit is {MAX_CRITERIA_BYTES}")
    return value  # every key and value checked above


_CRITERIA_VALUE_SCHEMA: Final[dict[str, Any]] = {
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
    WithJsonSchema(
        {"type": "string", "format": "uuid", "pattern": UUID_PATTERN, **_NO_LINE_BREAKS}
    ),
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


# -- The events ------------------------------------------------------------------------------


class _Event(BaseModel):
    # Strict contract: unknown fields are an error, not silently dropped.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Requester(_Event):
    """Who asked: drives the email, the language and timezone of the output, and bound links."""

    id: RequesterId | None = None
    email: Email | None = None
    language: Language = "en"
    timezone: Timezone = "UTC"


def _file_requested_schema(schema: dict[str, Any]) -> None:
    schema["x-bgworker-max-body-bytes"] = MAX_BODY_BYTES


class FileRequested(_Event):
    """Published by a service that wants a file built. ``id`` is the idempotency key."""

    model_config = ConfigDict(json_schema_extra=_file_requested_schema)

    schema_version: Annotated[Literal[1], BeforeValidator(_schema_version)] = SCHEMA_VERSION
    id: Uuid = Field(description="Made by the producer; publishing twice is harmless.")
    file_type: FileType = Field(description="Registered handler name.")
    criteria: Annotated[
        dict[str, JsonValue],
        PlainValidator(_check_criteria),
        WithJsonSchema(
            {
                "type": "object",
                "propertyNames": {"not": {"pattern": r"\x00"}},
                # The recursive value schema is added by json_schemas(): pydantic resolves
                # every $ref it sees here against its own definitions.
                "x-bgworker-max-json-bytes": MAX_CRITERIA_BYTES,
                "x-bgworker-max-depth": MAX_CRITERIA_DEPTH,
            }
        ),
    ] = Field(
        default_factory=dict,
        description=(
            f"Handler input; at most {MAX_CRITERIA_BYTES} bytes as compact UTF-8 JSON and "
            f"{MAX_CRITERIA_DEPTH} levels deep (criteria itself is level 1)."
        ),
    )
    filename: Filename = Field(description="Shown in the download and the email.")
    content_type: ContentType = "application/octet-stream"
    description: Description = ""
    requester: Requester | None = None
    requested_at: Annotated[
        AwareDatetime,
        BeforeValidator(_requested_at),
        WithJsonSchema(
            {
                "type": "string",
                "format": "date-time",
                "pattern": REQUESTED_AT_PATTERN,
                "not": _NO_LINE_BREAKS["not"],
            }
        ),
    ] = Field(default_factory=_now)
    lifetime_seconds: Annotated[int, BeforeValidator(_json_integer)] = Field(
        7 * 24 * 3600,
        ge=60,
        le=MAX_LIFETIME_SECONDS,
        description="How long the file stays downloadable once ready.",
    )

    def expires_at(self, ready_at: datetime) -> datetime:
        return ready_at + timedelta(seconds=self.lifetime_seconds)


class FileReady(_Event):
    """Announced on the events exchange once per request when its file is downloadable."""

    schema_version: Literal[1] = SCHEMA_VERSION
    id: uuid.UUID
    file_type: str
    filename: str
    content_type: str
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    ready_at: AwareDatetime
    expires_at: AwareDatetime
    download_url: str = Field(description="Signed link; bound to the requester when it has an id.")


class FileFailed(_Event):
    """Announced once per request that ends in ``failed``."""

    schema_version: Literal[1] = SCHEMA_VERSION
    id: uuid.UUID
    file_type: str | None = None
    reason: str = Field(description="Machine-readable: handler_error, invalid_event, ...")
    error_class: str
    error: str
    attempts: int = Field(ge=0)
    failed_at: AwareDatetime


EVENT_MODELS: Final[dict[str, type[BaseModel]]] = {
    "FileRequested": FileRequested,
    "FileReady": FileReady,
    "FileFailed": FileFailed,
}


class InvalidEventError(Exception):
    """A message body that is not a valid ``FileRequested``: never retried."""

    def __init__(self, reason: str, message: str, request_id: uuid.UUID | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.request_id = request_id


def decode_json(body: bytes) -> object:
    """A message body as strict JSON (``strict_json.decode``), at most MAX_BODY_BYTES.
    Raises InvalidEventError (``malformed_json`` or ``invalid_schema``) and nothing else."""
    if len(body) > MAX_BODY_BYTES:
        raise InvalidEventError(
            "invalid_schema", f"body: {len(body)} bytes; the limit is {MAX_BODY_BYTES}"
        )
    try:
        return strict_json.decode(body, MAX_JSON_DEPTH)
    except strict_json.DecodeError as exc:
        raise InvalidEventError("malformed_json", f"body: {exc}") from None


def parse_file_requested(body: bytes) -> FileRequested:
    """Decode a message body, naming the problem precisely when it is not acceptable.

    Raises InvalidEventError and nothing else, whatever the bytes; its message names the
    field and is itself storable (printable, at most MAX_ERROR_CHARS characters)."""
    raw = decode_json(body)
    if not isinstance(raw, dict):
        raise InvalidEventError("invalid_schema", "body: must be a JSON object")
    request_id = _maybe_uuid(raw.get("id"))
    version = raw.get("schema_version", SCHEMA_VERSION)
    if isinstance(version, bool) or version != SCHEMA_VERSION:
        raise InvalidEventError(
            "unsupported_schema_version",
            f"schema_version: {strict_json.show(version)} is not supported "
            f"(this worker reads {SCHEMA_VERSION})",
            request_id,
        )
    # What the models cannot see: placeholders for unrepresentable numbers, lone surrogates
    # in keys (an unknown field named with one would otherwise end up in the error text).
    problems = strict_json.unstorable(raw)
    if problems:
        text = "; ".join(f"{where or '(body)'}: {problem}" for where, problem in problems)
        raise InvalidEventError("invalid_schema", _cap(text), request_id)
    try:
        return FileRequested.model_validate(raw)
    except ValidationError as exc:
        raise InvalidEventError(
            "invalid_schema", describe_validation_error(exc), request_id
        ) from None


def describe_validation_error(exc: ValidationError) -> str:
    """``field: message; ...``, printable and capped (error texts are stored and sent)."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        field = ""
        for part in err["loc"]:
            field = strict_json.path(field, part)
        parts.append(f"{field or '(body)'}: {err['msg']}")
    return _cap("; ".join(parts))


def _cap(text: str) -> str:
    text = _LINE_BREAKING_RE.sub("\ufffd", strict_json.SURROGATE_RE.sub("\ufffd", text))
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


def _maybe_uuid(value: object) -> uuid.UUID | None:
    """The request id when the body carries one the contract accepts, else None."""
    if isinstance(value, str) and _UUID_RE.fullmatch(value):
        return uuid.UUID(value)
    return None


# -- Storing what was rejected ----------------------------------------------------------------

MAX_STORED_BYTES: Final = 256 * 1024
# The helpers the worker uses to record a rejected body (strict_json has the details).
storable = strict_json.storable
raw_body = strict_json.raw_body
RAW_BODY_CHARS: Final = strict_json.RAW_BODY_CHARS


def storable_body(body: bytes) -> dict[str, JsonValue]:
    """What to record for a rejected message: the body itself when it is a JSON object that
    fits MAX_STORED_BYTES once made storable, else ``raw_body(body)``."""
    try:
        raw = decode_json(body)
    except InvalidEventError:
        return raw_body(body)
    if not isinstance(raw, dict):
        return raw_body(body)
    stored = storable(raw)
    assert isinstance(stored, dict)
    if strict_json.json_size(stored) > MAX_STORED_BYTES:
        return raw_body(body)
    return stored


def strip_nul(value: Any) -> Any:
    """Kept for callers of the old name: ``storable(value)``."""
    return storable(value)


def json_schemas() -> dict[str, str]:
    """File name -> JSON Schema text for every event, stable so the files diff cleanly."""
    out: dict[str, str] = {}
    for name, model in EVENT_MODELS.items():
        schema = model.model_json_schema(mode="validation")
        if model is FileRequested:
            schema["$defs"]["CriteriaValue"] = _CRITERIA_VALUE_SCHEMA
            schema["properties"]["criteria"]["additionalProperties"] = {
                "$ref": "#/$defs/CriteriaValue"
            }
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://bgworker.dev/schemas/{name}.v{SCHEMA_VERSION}.json"
        out[f"{name}.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out
