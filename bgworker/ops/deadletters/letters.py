"""One dead letter, read safely whatever it holds.

A dead letter is whatever reached ``{ns}.dead``: our own letters, letters RabbitMQ made
itself (``x-death``), and bodies the worker could not parse at all. Reading one never
raises: a body that is not JSON, not UTF-8, nested deeper than the parser goes, or holds
numbers PostgreSQL and strict JSON refuse, and headers of any AMQP type, are all summarised
(``Letter``) and shown (``detail``).

Everything these functions return is plain JSON (str, int, finite float, bool, None, list,
dict with str keys) whose strings encode as UTF-8 and hold no control characters but
newline and tab, so every reader can print or store it: CLI text and ``--json``, console
HTML and JSON, the action rows in PostgreSQL (whose ``text`` refuses NUL). What had to be
changed is replaced with U+FFFD or a marker, never dropped silently, and named in ``notes``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final

from aio_pika.abc import AbstractIncomingMessage

from bgworker.messaging import wire

REPLACEMENT: Final = "\ufffd"
# Nesting shown by ``detail``; deeper subtrees become a marker. Kept far below Python's
# recursion limit, so rendering (json.dumps, Jinja's tojson) can never hit it either.
MAX_DEPTH: Final = 32
SHOW_BYTES: Final = 256 * 1024  # body bytes ``detail`` shows
PARSE_BYTES: Final = 16 * 1024 * 1024  # larger bodies are summarised from headers only
# Summary fields are cut to these lengths (our own headers stay below them: jobs.ERROR_LIMIT).
ERROR_CHARS: Final = 2000
FIELD_CHARS: Final = 200
# An int JSON cannot print: str(int) refuses more than sys.int_info.default_max_str_digits
# (4300) digits. 14,000 bits is about 4,200 digits.
MAX_INT_BITS: Final = 14_000
# Reason and error class of a letter that says neither (no header of ours, no x-death).
UNKNOWN: Final = "unknown"

# Lone UTF-16 surrogates: a JSON escape such as "\ud800" parses (RFC 8259 section 8.2
# allows it) into a str that cannot be encoded as UTF-8.
_SURROGATES: Final = re.compile("[\ud800-\udfff]")
# C0/C1 controls and DEL: NUL cannot be stored in PostgreSQL text, ESC/CSI sequences would
# drive the operator's terminal, CR/LF would break a table row.
_CONTROLS: Final = re.compile("[\x00-\x1f\x7f-\x9f]")
_CONTROLS_BUT_LINES: Final = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # keeps \t, \n


class Notes:
    """What had to be replaced while reading a letter, each note once, in order."""

    def __init__(self, items: tuple[str, ...] | list[str] = ()) -> None:
        self.items: list[str] = list(items)

    def add(self, note: str) -> None:
        if note not in self.items:
            self.items.append(note)


def clean(
    text: str, notes: Notes | None = None, where: str = "text", *, lines: bool = False
) -> str:
    """``text`` with lone surrogates and control characters replaced by U+FFFD (newlines
    and tabs kept when ``lines``)."""
    notes = notes if notes is not None else Notes()
    if _SURROGATES.search(text):
        text = _SURROGATES.sub(REPLACEMENT, text)
        notes.add(f"{where}: lone UTF-16 surrogates replaced with U+FFFD")
    controls = _CONTROLS_BUT_LINES if lines else _CONTROLS
    if controls.search(text):
        text = controls.sub(REPLACEMENT, text)
        notes.add(f"{where}: control characters replaced with U+FFFD")
    return text


def decode(raw: bytes | bytearray | memoryview, notes: Notes, where: str) -> str:
    """UTF-8 text of ``raw``; invalid sequences replaced (and noted)."""
    data = bytes(raw)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        notes.add(f"{where}: invalid UTF-8 replaced with U+FFFD")
        return data.decode("utf-8", "replace")


def cut(text: str, limit: int, notes: Notes, where: str) -> str:
    if len(text) <= limit:
        return text
    notes.add(f"{where}: cut to {limit} characters")
    return text[: limit - 1] + "…"


def plain(value: Any, notes: Notes | None = None, where: str = "value", depth: int = 0) -> Any:
    """``value`` (a parsed JSON document, an AMQP header value, a database row) as plain,
    printable JSON; see the module doc."""
    notes = notes if notes is not None else Notes()
    if not isinstance(value, Mapping | list | tuple):
        return _leaf(value, notes, where)
    if depth >= MAX_DEPTH:
        notes.add(f"{where}: nested deeper than {MAX_DEPTH} levels, the rest not shown")
        return f"<nested deeper than {MAX_DEPTH} levels>"
    if isinstance(value, Mapping):
        return {
            clean(str(k), notes, where): plain(v, notes, where, depth + 1) for k, v in value.items()
        }
    return [plain(v, notes, where, depth + 1) for v in value]


def _leaf(value: Any, notes: Notes, where: str) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if value.bit_length() > MAX_INT_BITS:
            notes.add(f"{where}: an integer of {value.bit_length()} bits shown as a marker")
            return f"<integer of {value.bit_length()} bits>"
        return value
    if isinstance(value, float | Decimal):
        try:
            number = float(value)  # a Decimal may be beyond float, or a signaling NaN
        except ValueError:
            number = math.nan
        if math.isfinite(number):
            return number
        notes.add(f"{where}: {value} (not valid JSON) shown as a string")
        return str(value)
    if isinstance(value, str):
        return clean(value, notes, where, lines=True)
    if isinstance(value, bytes | bytearray | memoryview):
        return clean(decode(value, notes, where), notes, where, lines=True)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    notes.add(f"{where}: a {type(value).__name__} value shown as its repr")
    try:
        text = repr(value)
    except Exception:  # a foreign object's repr may fail any way it likes
        text = f"<{type(value).__name__}>"
    return clean(text, notes, where)


def dumps(value: Any, *, indent: int | None = None) -> str:
    """Strict JSON text of anything ``plain`` takes (never NaN, never a lone surrogate)."""
    return json.dumps(plain(value), ensure_ascii=False, allow_nan=False, indent=indent)


def parse_body(body: bytes) -> tuple[Any, str | None]:
    """(the JSON document, None), or (None, why it could not be parsed)."""
    if len(body) > PARSE_BYTES:
        return None, f"not parsed: {len(body)} bytes is over the {PARSE_BYTES}-byte limit"
    try:
        return json.loads(body), None
    except RecursionError:
        # The C parser raises this for arrays/objects nested about 1000 deep.
        return None, "not JSON: nested too deeply to parse"
    except UnicodeDecodeError as exc:
        return None, f"not UTF-8: {exc}"
    except ValueError as exc:  # JSONDecodeError, and ints of more than 4300 digits
        return None, f"not JSON: {exc}"


def _header_text(
    value: Any, notes: Notes, where: str, limit: int = FIELD_CHARS, *, lines: bool = False
) -> str | None:
    """A header meant to be text, cleaned and cut (any other type is printed as JSON)."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value
    elif isinstance(value, bytes | bytearray | memoryview):
        text = decode(value, notes, where)
    else:
        text = json.dumps(plain(value, notes, where), ensure_ascii=False, allow_nan=False)
    return cut(clean(text, notes, where, lines=lines), limit, notes, where)


def _as_uuid(value: Any) -> uuid.UUID | None:
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def _as_time(value: Any) -> datetime | None:
    """An aware UTC datetime, or None for anything else (including times that only exist
    in another offset: year 1 at +05:00 is before the year 1 in UTC)."""
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode("utf-8", "replace")
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    try:
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    except (OverflowError, ValueError):
        return None


def _key_text(value: Any) -> bytes:
    try:
        text = str(value)
    except Exception:  # str() of a header value from a foreign producer: anything goes
        text = type(value).__name__
    return text.encode("utf-8", "surrogatepass")


def content_key(body: bytes, headers: Mapping[str, Any]) -> str:
    """The key of a letter with no usable request id: the same letter always gets the
    same key (body and failure time), so ``show`` and ``purge`` can name it."""
    digest = hashlib.sha256(body)
    digest.update(_key_text(headers.get(wire.FAILED_AT)))
    return "msg-" + digest.hexdigest()[:16]


def _table(headers: Any, notes: Notes) -> dict[str, Any]:
    if headers is None:
        return {}
    if isinstance(headers, Mapping):
        return {str(k): v for k, v in headers.items()}
    notes.add(f"headers: a {type(headers).__name__}, not a table; ignored")
    return {}


@dataclass(frozen=True)
class Letter:
    """A summary of one dead letter: what ``list`` shows; the body is not kept."""

    key: str  # the request id, or a content hash for letters that carry none
    request_id: uuid.UUID | None
    file_type: str | None
    reason: str
    error_class: str
    error: str
    attempts: int | None
    first_death: datetime | None
    last_death: datetime | None
    worker: str | None
    size: int
    body_error: str | None = None  # why the body is not a JSON document, when it is not
    notes: tuple[str, ...] = ()  # what was replaced to make the summary printable

    def age(self, now: datetime) -> timedelta | None:
        return None if self.last_death is None else now - self.last_death

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = plain(dataclasses.asdict(self))
        return out

    @classmethod
    def from_message(cls, message: AbstractIncomingMessage) -> Letter:
        return cls.from_parts(message.body, message.headers, message.message_id)

    @classmethod
    def from_parts(cls, body: bytes, headers: Any, message_id: Any) -> Letter:
        notes = Notes()
        table = _table(headers, notes)
        document, body_error = parse_body(body)
        doc = document if isinstance(document, dict) else {}
        # The body's id first: it is what replay acts on, and a letter published without a
        # message id by aiormq carries a random one (aiormq.channel.Channel.basic_publish).
        request_id = _as_uuid(doc.get("id")) or _as_uuid(message_id)
        # Letters the broker dead-lettered itself (work queue delivery limit, rejects)
        # carry x-death instead of our headers
        # (https://www.rabbitmq.com/docs/dlx#effects).
        raw_deaths = table.get(wire.X_DEATH)
        deaths = (
            [d for d in raw_deaths if isinstance(d, Mapping)]
            if isinstance(raw_deaths, list)
            else []
        )
        times = [t for t in (_as_time(d.get("time")) for d in deaths) if t]
        if (failed_at := _as_time(table.get(wire.FAILED_AT))) is not None:
            times.append(failed_at)
        times.sort()
        attempts = table.get(wire.ATTEMPTS)
        file_type = doc.get("file_type")

        def text(name: str) -> str | None:
            return _header_text(table.get(name), notes, f"header {name}")

        death_reason = (
            _header_text(deaths[0].get("reason"), notes, f"header {wire.X_DEATH}")
            if deaths
            else None
        )
        return cls(
            key=str(request_id) if request_id is not None else content_key(body, table),
            request_id=request_id,
            file_type=(
                cut(clean(file_type, notes, "file_type"), FIELD_CHARS, notes, "file_type")
                if isinstance(file_type, str)
                else None
            ),
            reason=text(wire.REASON) or death_reason or UNKNOWN,
            error_class=text(wire.ERROR_CLASS) or (wire.X_DEATH if deaths else UNKNOWN),
            error=_header_text(
                table.get(wire.ERROR),
                notes,
                f"header {wire.ERROR}",
                ERROR_CHARS,
                lines=True,
            )
            or "",
            attempts=(
                attempts if isinstance(attempts, int) and not isinstance(attempts, bool) else None
            ),
            first_death=times[0] if times else None,
            last_death=times[-1] if times else None,
            worker=text(wire.WORKER),
            size=len(body),
            body_error=None if body_error is None else clean(body_error, notes, "body"),
            notes=tuple(notes.items),
        )


def detail(message: AbstractIncomingMessage) -> dict[str, Any]:
    """Everything about one letter: summary, payload, all headers, traceback."""
    properties = {
        "message_id": message.message_id,
        "content_type": message.content_type,
        "delivery_mode": int(message.delivery_mode or 0),
        "redelivered": bool(message.redelivered),
    }
    return detail_of(message.body, message.headers, properties)


def detail_of(body: bytes, headers: Any, properties: Mapping[str, Any]) -> dict[str, Any]:
    """``detail`` for a body, a header table and message properties (pure)."""
    letter = Letter.from_parts(body, headers, properties.get("message_id"))
    notes = Notes(letter.notes)
    document, problem = parse_body(body)
    payload: Any = None
    text: str | None = None
    if problem is None and len(body) <= SHOW_BYTES:
        payload = plain(document, notes, "payload")
    else:
        text = clean(decode(body[:SHOW_BYTES], notes, "body"), notes, "body", lines=True)
        if len(body) > SHOW_BYTES:
            notes.add(f"body: {len(body)} bytes, the first {SHOW_BYTES} shown")
    shown_headers = {
        clean(name, notes, "header name"): plain(value, notes, f"header {clean(name)}")
        for name, value in _table(headers, notes).items()
    }
    traceback = shown_headers.get(wire.TRACEBACK)
    return {
        **letter.to_json(),
        "payload": payload,
        "body": text,
        "body_sha256": hashlib.sha256(body).hexdigest(),
        "headers": shown_headers,
        "traceback": traceback if isinstance(traceback, str) else "",
        "properties": plain(dict(properties), notes, "properties"),
        "notes": notes.items,
    }
