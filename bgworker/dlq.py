"""The dead-letter queue: read it without disturbing it, replay and purge what is selected.

Reading. A scan opens its own channel, takes the queue depth N, and ``basic.get``s N
messages *without acknowledging them*, one at a time; each is summarised (body parsed once,
then dropped) and handed to the caller. Closing the channel returns every unacknowledged
message to the queue, and RabbitMQ puts requeued messages of a classic queue back in their
original position (https://www.rabbitmq.com/docs/confirms#consumer-nacks-requeue). The
``{ns}.dead`` queue is classic and durable, so a scan leaves it exactly as it found it.

Writing. Replay and purge act during a scan: a selected message is acknowledged (removed)
only after its effect is done: for replay, the republish to the requests exchange has been
confirmed by the broker *and* the request row change has committed; for purge, the purge
has been recorded. Anything interrupted is still in the queue and can be acted on again;
re-running a replay skips the requests the interrupted one already put back.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import uuid
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final
from urllib.parse import urlsplit

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from bgworker import broker, events, topology
from bgworker import store as store_mod
from bgworker.store import dlq as dlq_store

GET_TIMEOUT: Final = 30.0
# Request states whose dead letter is stale: the request was served or is being worked on
# again (an earlier replay, a new publish). Their letters are removed, never replayed.
DONE: Final = frozenset({"ready", "expired"})
IN_PROGRESS: Final = frozenset({"queued", "running", "retrying"})
_AGE_RE: Final = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_AGE_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class DlqError(Exception):
    """An operator-facing failure: broker unreachable, queue missing, publish refused."""


def parse_age(text: str) -> timedelta:
    """``90s``, ``15m``, ``2h``, ``3d``, ``1w`` -> timedelta."""
    match = _AGE_RE.match(text.strip())
    if not match:
        raise ValueError(f"not an age: {text!r} (use e.g. 30s, 15m, 2h, 3d, 1w)")
    return timedelta(seconds=float(match[1]) * _AGE_UNITS[match[2]])


def jsonable(value: Any) -> Any:
    """AMQP header values (bytes, datetimes, decimals, nested tables) as JSON values."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _as_uuid(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(_text(value)))
    except ValueError:
        return None


def _as_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    text = _text(value)
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


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

    def age(self, now: datetime) -> timedelta | None:
        return None if self.last_death is None else now - self.last_death

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = jsonable(self.__dict__)
        return out

    @classmethod
    def from_message(cls, message: AbstractIncomingMessage) -> Letter:
        headers = dict(message.headers or {})
        body: Any = None
        with contextlib.suppress(ValueError):
            body = json.loads(message.body)
        body = body if isinstance(body, dict) else {}
        request_id = _as_uuid(message.message_id) or _as_uuid(body.get("id"))
        # Letters the broker dead-lettered itself (work queue delivery limit, rejects)
        # carry x-death instead of our headers.
        raw_deaths = headers.get("x-death")
        deaths = (
            [d for d in raw_deaths if isinstance(d, dict)] if isinstance(raw_deaths, list) else []
        )
        death_times = [t for t in (_as_time(d.get("time")) for d in deaths) if t]
        failed_at = _as_time(headers.get("x-bgworker-failed-at"))
        times = sorted([*death_times, *([failed_at] if failed_at else [])])
        if request_id is not None:
            key = str(request_id)
        else:
            digest = hashlib.sha256(message.body)
            digest.update(str(headers.get("x-bgworker-failed-at")).encode())
            key = "msg-" + digest.hexdigest()[:16]
        attempts = headers.get("x-bgworker-attempts")
        file_type = body.get("file_type")
        return cls(
            key=key,
            request_id=request_id,
            file_type=file_type if isinstance(file_type, str) else None,
            reason=_text(headers.get("x-bgworker-reason"))
            or (_text(deaths[0].get("reason")) if deaths else None)
            or "unknown",
            error_class=_text(headers.get("x-bgworker-error-class"))
            or ("x-death" if deaths else "unknown"),
            error=_text(headers.get("x-bgworker-error")) or "",
            attempts=int(attempts) if isinstance(attempts, int) else None,
            first_death=times[0] if times else None,
            last_death=times[-1] if times else None,
            worker=_text(headers.get("x-bgworker-worker")),
            size=len(message.body),
        )


def detail(message: AbstractIncomingMessage) -> dict[str, Any]:
    """Everything about one letter: summary, payload, all headers, traceback."""
    letter = Letter.from_message(message)
    try:
        payload: Any = json.loads(message.body)
    except ValueError:
        payload = message.body.decode("utf-8", "replace")
    headers = jsonable(dict(message.headers or {}))
    return {
        **letter.to_json(),
        "payload": payload,
        "headers": headers,
        "traceback": headers.get("x-bgworker-traceback", ""),
        "properties": {
            "message_id": message.message_id,
            "content_type": message.content_type,
            "delivery_mode": int(message.delivery_mode or 0),
            "redelivered": bool(message.redelivered),
        },
    }


@dataclass(frozen=True)
class Selection:
    """Which letters an action applies to: ids and filters combine with AND."""

    ids: frozenset[str] = frozenset()
    file_type: str | None = None
    error_class: str | None = None
    reason: str | None = None
    older_than: timedelta | None = None
    newer_than: timedelta | None = None
    everything: bool = False

    @property
    def is_empty(self) -> bool:
        """Nothing asked for: destructive actions refuse this (no accidental --all)."""
        return not (
            self.everything
            or self.ids
            or self.file_type
            or self.error_class
            or self.reason
            or self.older_than
            or self.newer_than
        )

    def matches(self, letter: Letter, now: datetime) -> bool:
        if self.ids and letter.key not in self.ids:
            return False
        if self.file_type is not None and letter.file_type != self.file_type:
            return False
        if self.error_class is not None and letter.error_class != self.error_class:
            return False
        if self.reason is not None and letter.reason != self.reason:
            return False
        age = letter.age(now)
        if self.older_than is not None and (age is None or age < self.older_than):
            return False
        return not (self.newer_than is not None and (age is None or age > self.newer_than))


@dataclass
class Held:
    """A letter taken from the queue but not acknowledged: ``ack`` removes it for good."""

    letter: Letter
    message: AbstractIncomingMessage

    async def ack(self) -> None:
        await self.message.ack()


def _safe_url(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 5672}{parts.path or '/'}"


class DeadLetterQueue:
    """A connection to one namespace's dead-letter queue (``async with``)."""

    def __init__(self, amqp_url: str, namespace: str) -> None:
        self.amqp_url = amqp_url
        self.topology = topology.Topology(namespace)
        self._connection: AbstractConnection | None = None
        self._confirm: AbstractChannel | None = None

    @property
    def name(self) -> str:
        return self.topology.dead_queue

    async def __aenter__(self) -> DeadLetterQueue:
        try:
            # A plain connection, not a robust one: an operator command should fail clearly
            # rather than reconnect and silently re-read.
            self._connection = await aio_pika.connect(self.amqp_url, timeout=10)
        except (OSError, aiormq.exceptions.AMQPError, TimeoutError) as exc:
            raise DlqError(
                f"cannot reach RabbitMQ at {_safe_url(self.amqp_url)}: {exc or type(exc).__name__}"
            ) from exc
        try:
            await self.depth()  # fails early, and clearly, when the queue is missing
        except BaseException:
            await self._connection.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._connection is not None:
            await self._connection.close()

    @property
    def connection(self) -> AbstractConnection:
        if self._connection is None:
            raise RuntimeError("use `async with DeadLetterQueue(...)`")
        return self._connection

    async def depth(self) -> int:
        """Messages ready in the queue. A passive declare on a throwaway channel: a missing
        queue closes the channel it was asked on."""
        channel = await self.connection.channel()
        try:
            return await broker.queue_depth(channel, self.name)
        except aiormq.exceptions.ChannelNotFoundEntity as exc:
            raise DlqError(
                f"queue {self.name!r} does not exist on {_safe_url(self.amqp_url)}: "
                "wrong namespace (BGWORKER_NAMESPACE), or no worker has run yet"
            ) from exc
        finally:
            if not channel.is_closed:
                await channel.close()

    async def publish_request(self, body: bytes, request_id: str, replays: int) -> None:
        """Back onto the requests exchange, confirmed (raises broker.PublishError)."""
        if self._confirm is None or self._confirm.is_closed:
            self._confirm = await broker.open_channel(self.connection)  # type: ignore[arg-type]
        message = broker.request_message(body, request_id, **{"x-bgworker-replay": replays})
        await broker.publish(
            self._confirm, self.topology.requests_exchange, topology.REQUESTED_KEY, message
        )

    async def scan(self) -> AsyncGenerator[Held, None]:
        """Every message present when the scan starts, in queue order, held unacknowledged
        until the scan ends (then the broker puts back the ones not acknowledged). One
        message is in memory at a time. Use with ``contextlib.aclosing``."""
        total = await self.depth()
        channel = await self.connection.channel()
        try:
            queue = await channel.get_queue(self.name, ensure=False)
            for _ in range(total):
                message = await queue.get(no_ack=False, fail=False, timeout=GET_TIMEOUT)
                if message is None:  # another reader holds the rest
                    break
                yield Held(Letter.from_message(message), message)
        finally:
            if not channel.is_closed:
                await channel.close()


async def letters(
    dlq: DeadLetterQueue, selection: Selection | None = None
) -> AsyncIterator[Letter]:
    """Summaries of the letters matching ``selection`` (all by default); changes nothing."""
    now = datetime.now(UTC)
    async with contextlib.aclosing(dlq.scan()) as held:
        async for item in held:
            if selection is None or selection.matches(item.letter, now):
                yield item.letter


async def show(dlq: DeadLetterQueue, key: str) -> dict[str, Any] | None:
    """The full detail of the first letter with this key (request id), or None."""
    async with contextlib.aclosing(dlq.scan()) as held:
        async for item in held:
            if item.letter.key == key:
                return detail(item.message)
    return None


@dataclass
class Stats:
    total: int = 0
    by_group: Counter[tuple[str, str]] = field(default_factory=Counter)
    by_reason: Counter[str] = field(default_factory=Counter)
    oldest: datetime | None = None
    newest: datetime | None = None

    def add(self, letter: Letter) -> None:
        self.total += 1
        self.by_group[(letter.file_type or "?", letter.error_class)] += 1
        self.by_reason[letter.reason] += 1
        if letter.last_death is not None:
            if self.oldest is None or letter.last_death < self.oldest:
                self.oldest = letter.last_death
            if self.newest is None or letter.last_death > self.newest:
                self.newest = letter.last_death

    def to_json(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "groups": [
                {"file_type": ft, "error_class": ec, "count": n}
                for (ft, ec), n in sorted(self.by_group.items(), key=lambda kv: -kv[1])
            ],
            "by_reason": dict(self.by_reason.most_common()),
            "oldest": jsonable(self.oldest),
            "newest": jsonable(self.newest),
        }


async def stats(dlq: DeadLetterQueue, selection: Selection | None = None) -> Stats:
    out = Stats()
    async for letter in letters(dlq, selection):
        out.add(letter)
    return out


@dataclass(frozen=True)
class Outcome:
    key: str
    result: str  # replayed, purged, skipped, kept, duplicate, would-replay, would-purge, ...
    detail: str = ""
    removed: bool = False  # the letter left the queue

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Report:
    action: str
    dry_run: bool
    scanned: int = 0
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def counts(self) -> Counter[str]:
        return Counter(o.result for o in self.outcomes)

    @property
    def removed(self) -> int:
        return sum(o.removed for o in self.outcomes)

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "dry_run": self.dry_run,
            "scanned": self.scanned,
            "counts": dict(self.counts),
            "removed": self.removed,
            "outcomes": [o.to_json() for o in self.outcomes],
        }


Progress = Callable[[int, int], None]  # (letters scanned, letters in the queue at start)


async def replay(
    dlq: DeadLetterQueue,
    db: store_mod.Store,
    selection: Selection,
    *,
    actor: str,
    keep_attempts: bool = False,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> Report:
    """Put the selected letters' requests back on the work queue (see the module doc)."""
    report = Report("replay", dry_run)
    now = datetime.now(UTC)
    replayed: set[str] = set()
    total = await dlq.depth()
    async with contextlib.aclosing(dlq.scan()) as held:
        async for item in held:
            report.scanned += 1
            if selection.matches(item.letter, now):
                outcome = await _replay_one(
                    dlq, db, item, replayed, actor=actor, keep=keep_attempts, dry_run=dry_run
                )
                report.outcomes.append(outcome)
            if progress is not None:
                progress(report.scanned, total)
    return report


async def _replay_one(
    dlq: DeadLetterQueue,
    db: store_mod.Store,
    item: Held,
    replayed: set[str],
    *,
    actor: str,
    keep: bool,
    dry_run: bool,
) -> Outcome:
    letter = item.letter
    try:
        event = events.parse_file_requested(item.message.body)
    except events.InvalidEventError as exc:
        # Replaying would only dead-letter it again (and a failed row must not be left
        # queued with no runnable message): keep it until it is fixed or purged.
        return Outcome(letter.key, "kept", f"still invalid ({exc.reason}): {exc}")
    key = str(event.id)
    if key in replayed:
        # A second letter for a request already put back in this run (a dead letter
        # published twice around a crash): one replay is enough.
        if not dry_run:
            await item.ack()
        return Outcome(letter.key, "duplicate", "request already replayed", removed=not dry_run)
    if dry_run:
        row = await db.get_request(event.id)
        status = row.status if row else None
        verdict = _verdict(status)
        if verdict is None:
            replayed.add(key)
            return Outcome(letter.key, "would-replay", f"status {status or 'unrecorded'}")
        return Outcome(letter.key, "would-skip", verdict[0])

    async def publish(replays: int) -> None:
        await dlq.publish_request(item.message.body, key, replays)

    try:
        status, replays = await dlq_store.requeue(
            db,
            event.id,
            letter=letter,
            actor=actor,
            keep_attempts=keep,
            verdict=_verdict,
            publish=publish,
        )
    except broker.PublishError as exc:
        raise DlqError(f"replay of {key} stopped: {exc}") from exc
    verdict = _verdict(status)
    if verdict is None:
        replayed.add(key)
        await item.ack()  # only now: the republish is confirmed and the row committed
        return Outcome(letter.key, "replayed", f"replay #{replays}", removed=True)
    why, remove = verdict
    if remove:
        await item.ack()
    return Outcome(letter.key, "skipped", why, removed=remove)


def _verdict(status: str | None) -> tuple[str, bool] | None:
    """None: replay. Otherwise (why it is skipped, whether the stale letter is removed)."""
    if status is None or status == "failed":
        return None
    if status in DONE:
        return (f"request is {status}: not run twice", True)
    if status in IN_PROGRESS:
        return (f"request is {status} again (replayed or republished)", True)
    return (f"request is {status}", False)


async def purge(
    dlq: DeadLetterQueue,
    db: store_mod.Store,
    selection: Selection,
    *,
    actor: str,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> Report:
    """Remove the selected letters, recording each purge (on its request row when known)."""
    report = Report("purge", dry_run)
    now = datetime.now(UTC)
    total = await dlq.depth()
    async with contextlib.aclosing(dlq.scan()) as held:
        async for item in held:
            report.scanned += 1
            if selection.matches(item.letter, now):
                if dry_run:
                    report.outcomes.append(Outcome(item.letter.key, "would-purge"))
                else:
                    await dlq_store.record_purge(db, item.letter, actor=actor)
                    await item.ack()
                    report.outcomes.append(Outcome(item.letter.key, "purged", removed=True))
            if progress is not None:
                progress(report.scanned, total)
    return report
