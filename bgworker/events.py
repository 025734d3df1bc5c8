"""The event contract: what producers publish and what bgworker announces.

These pydantic models are the source of truth for ``schemas/*.json`` (``bgworker schemas
export``); a test fails when the committed files drift from them.
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    JsonValue,
    ValidationError,
    field_validator,
)

SCHEMA_VERSION: Final = 1
MAX_CRITERIA_BYTES: Final = 64 * 1024
MAX_LIFETIME_SECONDS: Final = 366 * 24 * 3600
FILE_TYPE_PATTERN: Final = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
CONTENT_TYPE_PATTERN: Final = r"^[a-zA-Z0-9!#$&^_.+-]+/[a-zA-Z0-9!#$&^_.+-]+(;.{0,200})?$"
_LANGUAGE_RE: Final = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
_FORBIDDEN_FILENAME_CHARS: Final = frozenset('/\\"')


def _now() -> datetime:
    return datetime.now(UTC)


def _nul_path(value: object, path: str = "") -> str | None:
    """Where a NUL character (U+0000) hides in a JSON-like value, or None. PostgreSQL text
    and jsonb cannot hold it, so an event carrying one could never be recorded."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    items: list[tuple[object, object]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and "\x00" in key:
                return f"{path}.{key!r}" if path else repr(key)
            items.append((key, item))
    elif isinstance(value, list):
        items = list(enumerate(value))
    for key, item in items:
        found = _nul_path(item, f"{path}.{key}" if path else str(key))
        if found:
            return found
    return None


def _no_nul(value: Any) -> Any:
    where = _nul_path(value)
    if where is not None:
        at = f" (at {where})" if where else ""
        raise ValueError(f"must not contain NUL characters (U+0000){at}")
    return value


def strip_nul(value: Any) -> Any:
    """``value`` with every NUL replaced by U+FFFD, so a rejected body can still be stored."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {strip_nul(k): strip_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [strip_nul(v) for v in value]
    return value


class _Event(BaseModel):
    # Strict contract: unknown fields are an error, not silently dropped.
    model_config = ConfigDict(extra="forbid", frozen=True)


@functools.cache
def _timezones() -> frozenset[str]:
    # available_timezones() walks the tz database on disk (~600 files) on every call: once
    # per process is enough (it was most of a worker's CPU with requesters in the events).
    return frozenset(available_timezones())


class Requester(_Event):
    """Who asked: drives the email, the language and timezone of the output, and bound links."""

    id: Annotated[str | None, Field(min_length=1, max_length=200)] = None
    email: EmailStr | None = None
    language: str = "en"
    timezone: str = "UTC"

    _nul = field_validator("id")(_no_nul)

    @field_validator("language")
    @classmethod
    def _check_language(cls, value: str) -> str:
        if not _LANGUAGE_RE.fullmatch(value):
            raise ValueError("language must be a BCP 47 tag such as 'en' or 'pt-BR'")
        return value

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA timezone {value!r}") from None
        if value not in _timezones() and value != "UTC":
            raise ValueError(f"unknown IANA timezone {value!r}")
        return value


class FileRequested(_Event):
    """Published by a service that wants a file built. ``id`` is the idempotency key."""

    schema_version: Literal[1] = SCHEMA_VERSION
    id: uuid.UUID = Field(description="Made by the producer; publishing twice is harmless.")
    file_type: str = Field(pattern=FILE_TYPE_PATTERN, description="Registered handler name.")
    criteria: dict[str, JsonValue] = Field(
        default_factory=dict,
        description=f"Handler input; at most {MAX_CRITERIA_BYTES} bytes as JSON.",
    )
    filename: str = Field(min_length=1, max_length=255)
    content_type: str = Field("application/octet-stream", pattern=CONTENT_TYPE_PATTERN)
    description: str = Field("", max_length=1000)
    requester: Requester | None = None
    requested_at: AwareDatetime = Field(default_factory=_now)
    lifetime_seconds: int = Field(
        7 * 24 * 3600,
        ge=60,
        le=MAX_LIFETIME_SECONDS,
        description="How long the file stays downloadable once ready.",
    )

    _nul = field_validator("criteria", "content_type", "description")(_no_nul)

    @field_validator("criteria")
    @classmethod
    def _cap_criteria(cls, value: dict[str, Any]) -> dict[str, Any]:
        size = len(json.dumps(value, separators=(",", ":")).encode())
        if size > MAX_CRITERIA_BYTES:
            raise ValueError(f"criteria is {size} bytes as JSON; the limit is {MAX_CRITERIA_BYTES}")
        return value

    @field_validator("filename")
    @classmethod
    def _check_filename(cls, value: str) -> str:
        if value in {".", ".."} or value != value.strip():
            raise ValueError("filename must be a plain name without surrounding spaces")
        bad = sorted(
            {c for c in value if c in _FORBIDDEN_FILENAME_CHARS or unicodedata.category(c) == "Cc"}
        )
        if bad:
            raise ValueError(
                f"filename must not contain path separators, quotes or control "
                f"characters (found {''.join(repr(c) for c in bad)})"
            )
        return value

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


def parse_file_requested(body: bytes) -> FileRequested:
    """Decode a message body, naming the problem precisely when it is not acceptable."""
    try:
        raw = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidEventError("malformed_json", f"body is not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise InvalidEventError("invalid_schema", "body must be a JSON object")
    request_id = _maybe_uuid(raw.get("id"))
    version = raw.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise InvalidEventError(
            "unsupported_schema_version",
            f"schema_version {version!r} is not supported (this worker reads {SCHEMA_VERSION})",
            request_id,
        )
    try:
        return FileRequested.model_validate(raw)
    except ValidationError as exc:
        raise InvalidEventError(
            "invalid_schema", describe_validation_error(exc), request_id
        ) from None


def describe_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        field = ".".join(str(p) for p in err["loc"]) or "(body)"
        parts.append(f"{field}: {err['msg']}")
    return "; ".join(parts)


def _maybe_uuid(value: object) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def json_schemas() -> dict[str, str]:
    """File name -> JSON Schema text for every event, stable so the files diff cleanly."""
    out: dict[str, str] = {}
    for name, model in EVENT_MODELS.items():
        schema = model.model_json_schema(mode="validation")
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://bgworker.dev/schemas/{name}.v{SCHEMA_VERSION}.json"
        out[f"{name}.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out
