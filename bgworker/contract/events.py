"""The event contract: what producers publish and what bgworker announces.

These pydantic models are the source of truth for ``schemas/*.json`` (``bgworker schemas
export``); a test fails when the committed files drift from them. Every rule the worker
enforces on a ``FileRequested`` is stated in its schema: as a JSON Schema keyword where one
exists, else as a documented ``x-bgworker-*`` keyword (docs/reference.md, "The event
contract").

The rules exist because an accepted event must be *carried* all the way: stored in
PostgreSQL (text, jsonb, timestamptz), put in HTTP and email headers, and rendered in an
email. An event that passes validation but cannot be carried fails later, where it is far
more expensive (held, redelivered, retried by the outbox forever).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal, TypeVar

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
)

from bgworker.contract import callback_urls, event_fields, patterns, strict_json

SCHEMA_VERSION: Final = 1
# Nesting of a whole body, checked before parsing: above criteria's limit plus the levels
# around it, so a deep criteria value is reported by its field rather than as bad JSON.
MAX_JSON_DEPTH: Final = strict_json.MAX_DEPTH
# A valid body is at most ~70 KiB compact; this leaves room for pretty-printing and bounds
# the work spent on any message.
MAX_BODY_BYTES: Final = 1024 * 1024
MAX_ERROR_CHARS: Final = 2000
# Reasons an InvalidEventError carries (the dead letter's x-bgworker-reason).
REASONS: Final = frozenset({"malformed_json", "invalid_schema", "unsupported_schema_version"})
# The field limits, where callers (and tests) have always found them; event_fields owns them.
MAX_CRITERIA_BYTES: Final = patterns.MAX_CRITERIA_BYTES
FILE_TYPE_PATTERN: Final = patterns.FILE_TYPE_PATTERN
TIMEZONES: Final = patterns.TIMEZONES


def _now() -> datetime:
    return datetime.now(UTC)


def _schema_version(value: object) -> object:
    if isinstance(value, bool):
        raise event_fields.error(f"must be {SCHEMA_VERSION}, not a boolean")
    return value


# -- The events ------------------------------------------------------------------------------


# What a file is served as when neither the request nor its handler says.
DEFAULT_CONTENT_TYPE: Final = "application/octet-stream"


class _Event(BaseModel):
    # Strict contract: unknown fields are an error, not silently dropped.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Requester(_Event):
    """Who asked: drives the email, the language and timezone of the output, and bound links."""

    id: event_fields.RequesterId | None = None
    email: event_fields.Email | None = None
    language: event_fields.Language = "en"
    timezone: event_fields.Timezone = "UTC"


def _file_requested_schema(schema: dict[str, Any]) -> None:
    schema["x-bgworker-max-body-bytes"] = MAX_BODY_BYTES


class FileRequested(_Event):
    """Published by a service that wants a file built. ``id`` is the idempotency key."""

    model_config = ConfigDict(json_schema_extra=_file_requested_schema)

    schema_version: Annotated[Literal[1], BeforeValidator(_schema_version)] = SCHEMA_VERSION
    id: event_fields.Uuid = Field(description="Made by the producer; publishing twice is harmless.")
    file_type: event_fields.FileType = Field(description="Registered handler name.")
    criteria: event_fields.Criteria = Field(
        default_factory=dict,
        description=(
            f"Handler input; at most {patterns.MAX_CRITERIA_BYTES} bytes as compact UTF-8 "
            f"JSON and {patterns.MAX_CRITERIA_DEPTH} levels deep (criteria itself is "
            "level 1)."
        ),
    )
    # Both may be left out (or null): the worker then uses what the file type's handler
    # declares (`extension=`, `content_type=`), see handlers.with_defaults.
    filename: event_fields.Filename | None = Field(
        None,
        description=(
            "Shown in the download and the email. Absent or null: `<file_type>.<extension>` "
            "with the extension the handler declares (`<file_type>` if it declares none)."
        ),
    )
    content_type: event_fields.ContentType | None = Field(
        None,
        description=(
            f"Absent or null: the content type the handler declares, else `{DEFAULT_CONTENT_TYPE}`."
        ),
    )
    description: event_fields.Description = ""
    requester: Requester | None = None
    tenant: event_fields.Tenant | None = Field(
        None,
        description=(
            "The fairness key: caps, quotas and the console count requests per tenant. "
            "Absent or null: the requester's id (no requester id: the tenant-less share)."
        ),
    )
    priority: event_fields.Priority = Field(
        "normal",
        description=(
            "Order in the work queue: the AMQP message priority bgworker publishes it with "
            "(low 0, normal 1, high 5). A classic queue serves higher first; a RabbitMQ 4 "
            "quorum queue has two levels (0-4 normal, 5+ high, served 2:1); RabbitMQ 3.x "
            "quorum queues ignore it."
        ),
    )
    requested_at: event_fields.RequestedAt = Field(default_factory=_now)
    lifetime_seconds: event_fields.JsonInteger = Field(
        7 * 24 * 3600,
        ge=60,
        le=patterns.MAX_LIFETIME_SECONDS,
        description="How long the file stays downloadable once ready.",
    )
    callback_url: callback_urls.CallbackUrl | None = Field(
        None,
        description=(
            "Receives FileReady or FileFailed as a signed POST (Standard Webhooks); replaces "
            "the deployment's webhook URL for this request. Refused when sent if its host "
            "resolves to a loopback, private or otherwise non-public address, unless the "
            "deployment allows them."
        ),
    )


def tenant_of(event: FileRequested) -> str:
    """Whom a request counts against: its tenant, else its requester's id, else "" (every
    request without either shares one tenant; the contract refuses an empty tenant, so ""
    never collides with a named one)."""
    if event.tenant is not None:
        return event.tenant
    if event.requester is not None and event.requester.id is not None:
        return event.requester.id
    return ""


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
    error: str = Field(
        description="For operators: the exception text; never show it to a requester."
    )
    message: str = Field(
        "the file could not be made",
        description="For the requester: a plain text by reason, never exception text.",
    )
    attempts: int = Field(ge=0)
    failed_at: AwareDatetime


class CancelRequested(_Event):
    """Published by a producer to stop a request: ``id`` is the request's. Idempotent, and it
    wins: a queued or retrying request ends cancelled, a running one stops at its next lease
    renewal and never becomes ready, and a cancel that arrives before its request makes the
    request end cancelled unbuilt when it comes. A request already ready or failed stays so."""

    schema_version: Annotated[Literal[1], BeforeValidator(_schema_version)] = SCHEMA_VERSION
    id: event_fields.Uuid = Field(description="The id of the FileRequested to cancel.")


EVENT_MODELS: Final[dict[str, type[BaseModel]]] = {
    "FileRequested": FileRequested,
    "CancelRequested": CancelRequested,
    "FileReady": FileReady,
    "FileFailed": FileFailed,
}


# At most this many (location, message) pairs are kept on an InvalidEventError: a hostile
# body of a million unknown fields must not make an answer of a million errors.
MAX_ERRORS: Final = 100

FieldError = tuple[str, str]
_M = TypeVar("_M", bound=BaseModel)


class InvalidEventError(Exception):
    """A message body that is not a valid ``FileRequested``: never retried.

    ``errors`` are the same problems as (location, message) pairs, each printable and
    capped (``POST /requests`` answers them as a list); the message joins them."""

    def __init__(
        self,
        reason: str,
        message: str,
        request_id: uuid.UUID | None = None,
        errors: list[FieldError] | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.request_id = request_id
        self.errors: tuple[FieldError, ...] = tuple(errors or [("(body)", message)])[:MAX_ERRORS]


def _invalid(
    reason: str, errors: list[FieldError], request_id: uuid.UUID | None = None
) -> InvalidEventError:
    """An InvalidEventError whose message is ``location: message; ...``, capped."""
    text = _cap("; ".join(f"{where}: {problem}" for where, problem in errors))
    capped = [(_cap(where), _cap(problem)) for where, problem in errors[:MAX_ERRORS]]
    return InvalidEventError(reason, text, request_id, capped)


def decode_json(body: bytes) -> object:
    """A message body as strict JSON (``strict_json.decode``), at most MAX_BODY_BYTES.
    Raises InvalidEventError (``malformed_json`` or ``invalid_schema``) and nothing else."""
    if len(body) > MAX_BODY_BYTES:
        raise _invalid(
            "invalid_schema", [("body", f"{len(body)} bytes; the limit is {MAX_BODY_BYTES}")]
        )
    try:
        return strict_json.decode(body, MAX_JSON_DEPTH)
    except strict_json.DecodeError as exc:
        raise _invalid("malformed_json", [("body", str(exc))]) from None


def parse_file_requested(body: bytes) -> FileRequested:
    """Decode a message body, naming the problem precisely when it is not acceptable.

    Raises InvalidEventError and nothing else, whatever the bytes; its message names the
    field and is itself storable (printable, at most MAX_ERROR_CHARS characters)."""
    raw = decode_json(body)
    if not isinstance(raw, dict):
        raise _invalid("invalid_schema", [("body", "must be a JSON object")])
    request_id = _maybe_uuid(raw.get("id"))
    version = raw.get("schema_version", SCHEMA_VERSION)
    if isinstance(version, bool) or version != SCHEMA_VERSION:
        problem = (
            f"{strict_json.show(version)} is not supported (this worker reads {SCHEMA_VERSION})"
        )
        raise _invalid("unsupported_schema_version", [("schema_version", problem)], request_id)
    # What the models cannot see: placeholders for unrepresentable numbers, lone surrogates
    # in keys (an unknown field named with one would otherwise end up in the error text).
    problems = strict_json.unstorable(raw)
    if problems:
        errors = [(where or "(body)", problem) for where, problem in problems]
        raise _invalid("invalid_schema", errors, request_id)
    try:
        return FileRequested.model_validate(raw)
    except ValidationError as exc:
        raise _invalid("invalid_schema", validation_errors(exc), request_id) from None


def parse_cancel_requested(body: bytes) -> CancelRequested:
    """A ``CancelRequested`` body; raises InvalidEventError and nothing else."""
    return parse_model(body, CancelRequested)


def parse_model(body: bytes, model: type[_M]) -> _M:
    """A body as ``model`` (an event without the FileRequested's version and storability
    checks of its own); raises InvalidEventError and nothing else."""
    raw = decode_json(body)
    if not isinstance(raw, dict):
        raise _invalid("invalid_schema", [("body", "must be a JSON object")])
    problems = strict_json.unstorable(raw)
    if problems:
        errors = [(where or "(body)", problem) for where, problem in problems]
        raise _invalid("invalid_schema", errors, _maybe_uuid(raw.get("id")))
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise _invalid(
            "invalid_schema", validation_errors(exc), _maybe_uuid(raw.get("id"))
        ) from None


def validation_errors(exc: ValidationError) -> list[FieldError]:
    """(field, message) for each problem pydantic found, the field as a dotted path."""
    out: list[FieldError] = []
    for err in exc.errors(include_url=False, include_input=False):
        field = ""
        for part in err["loc"]:
            field = strict_json.path(field, part)
        out.append((field or "(body)", err["msg"]))
    return out


def describe_validation_error(exc: ValidationError) -> str:
    """``field: message; ...``, printable and capped (error texts are stored and sent)."""
    return _cap("; ".join(f"{field}: {message}" for field, message in validation_errors(exc)))


def _cap(text: str) -> str:
    text = patterns.LINE_BREAKING_RE.sub("\ufffd", strict_json.SURROGATE_RE.sub("\ufffd", text))
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


def _maybe_uuid(value: object) -> uuid.UUID | None:
    """The request id when the body carries one the contract accepts, else None."""
    if isinstance(value, str) and patterns.UUID_RE.fullmatch(value):
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


def json_schemas(more: dict[str, type[BaseModel]] | None = None) -> dict[str, str]:
    """File name -> JSON Schema text for every event (and ``more``: models of modules built
    on this one), stable so the files diff cleanly."""
    out: dict[str, str] = {}
    for name, model in {**EVENT_MODELS, **(more or {})}.items():
        schema = model.model_json_schema(mode="validation")
        # criteria, of the request or of each part of a bundle: the recursive value schema.
        for owner in (schema, schema.get("$defs", {}).get("BundlePart", {})):
            criteria = owner.get("properties", {}).get("criteria")
            if criteria is not None:
                schema["$defs"]["CriteriaValue"] = event_fields.CRITERIA_VALUE_SCHEMA
                criteria["additionalProperties"] = {"$ref": "#/$defs/CriteriaValue"}
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://bgworker.dev/schemas/{name}.v{SCHEMA_VERSION}.json"
        out[f"{name}.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def same_request(recorded: dict[str, Any], event: FileRequested) -> bool:
    """Whether ``event`` is the request already recorded under its id (the same comparison
    as record_and_claim's: jsonb equality, requested_at only when the producer set it)."""
    return not differing_fields(recorded, event)


def differing_fields(recorded: dict[str, Any], event: FileRequested) -> list[str]:
    new = event.model_dump(mode="json")
    names = set(recorded) | set(new)
    if "requested_at" not in event.model_fields_set:
        names.discard("requested_at")
    return sorted(n for n in names if recorded.get(n) != new.get(n))
