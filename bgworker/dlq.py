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
import enum
import re
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from urllib.parse import urlsplit

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from bgworker import broker, dlq_letter, events, topology
from bgworker import store as store_mod
from bgworker.store import dlq as dlq_store

GET_TIMEOUT: Final = 30.0
# Request states whose dead letter is stale: the request was served. Their letters are
# removed, never replayed.
DONE: Final = frozenset({"ready", "expired"})
# Request states that wait for a message on the work queue. That message may be gone (the
# quorum queue's delivery limit dead-lettered it, a retry message was lost with a broker),
# so replay republishes rather than trusting it is there.
WAITING: Final = frozenset({"queued", "retrying"})
_AGE_RE: Final = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_AGE_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class DlqError(Exception):
    """An operator-facing failure: broker unreachable, queue missing, publish refused."""


class UndecodableLetterError(DlqError):
    """A letter whose AMQP frames the client library cannot decode (pamqp refuses, for
    example, a timestamp header beyond the year 9999 or a short string property that is
    not UTF-8). aiormq then closes the whole connection, so neither it nor any letter
    behind it can be read; ``purge_undecodable`` removes it."""

    def __init__(self, queue: str, position: int, error: str) -> None:
        self.position = position  # letters before it in the queue
        self.error = error
        super().__init__(
            f"letter #{position + 1} in {queue} cannot be decoded by this AMQP client "
            f"({error}); it and the letters behind it cannot be read. Look at it in the "
            "RabbitMQ management UI, then remove it with `bgworker dlq purge --undecodable`"
        )


def parse_age(text: str) -> timedelta:
    """``90s``, ``15m``, ``2h``, ``3d``, ``1w`` -> timedelta."""
    match = _AGE_RE.match(text.strip())
    if not match:
        raise ValueError(f"not an age: {text!r} (use e.g. 30s, 15m, 2h, 3d, 1w)")
    return timedelta(seconds=float(match[1]) * _AGE_UNITS[match[2]])


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

    def matches(self, letter: dlq_letter.Letter, now: datetime) -> bool:
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

    letter: dlq_letter.Letter
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
        await self.connect()
        return self

    async def connect(self) -> None:
        """(Re)open the connection; a letter that cannot be decoded closes it."""
        if self._connection is not None and not self._connection.is_closed:
            await self._connection.close()
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
        await broker.put_back(self._confirm, self.topology, body, request_id, replays=replays)

    async def scan(self) -> AsyncGenerator[Held, None]:
        """Every message present when the scan starts, in queue order, held unacknowledged
        until the scan ends (then the broker puts back the ones not acknowledged). One
        message is in memory at a time. Use with ``contextlib.aclosing``."""
        total = await self.depth()
        channel = await self.connection.channel()
        try:
            queue = await channel.get_queue(self.name, ensure=False)
            for position in range(total):
                try:
                    message = await queue.get(no_ack=False, fail=False, timeout=GET_TIMEOUT)
                except aiormq.exceptions.InvalidFrameError as exc:
                    raise UndecodableLetterError(self.name, position, str(exc)) from exc
                if message is None:  # another reader holds the rest
                    break
                yield Held(dlq_letter.Letter.from_message(message), message)
        finally:
            if not channel.is_closed:
                await channel.close()


async def letters(
    dlq: DeadLetterQueue, selection: Selection | None = None
) -> AsyncIterator[dlq_letter.Letter]:
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
                return dlq_letter.detail(item.message)
    return None


@dataclass
class Stats:
    total: int = 0
    by_group: Counter[tuple[str, str]] = field(default_factory=Counter)
    by_reason: Counter[str] = field(default_factory=Counter)
    oldest: datetime | None = None
    newest: datetime | None = None

    def add(self, letter: dlq_letter.Letter) -> None:
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
            "oldest": dlq_letter.plain(self.oldest),
            "newest": dlq_letter.plain(self.newest),
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


class Plan(enum.StrEnum):
    """What replay does with one letter, decided from its request row."""

    REPLAY = "replay"  # failed or unrecorded: row back to queued, body republished
    REPUBLISH = "republish"  # queued/retrying: body republished, row left as it is
    FORCE = "force"  # cancelled, --force: cancel cleared, row queued, body republished
    DROP = "drop"  # stale letter: removed, nothing to run
    KEEP = "keep"  # letter kept, nothing done
    REFUSE = "refuse"  # cancelled, no --force: letter kept

    @property
    def publishes(self) -> bool:
        return self in (Plan.REPLAY, Plan.REPUBLISH, Plan.FORCE)


@dataclass(frozen=True)
class Decision:
    plan: Plan
    why: str

    @property
    def removes(self) -> bool:
        """The letter leaves the queue (after its republish, if any, is confirmed)."""
        return self.plan.publishes or self.plan is Plan.DROP


def decide(
    request_id: str,
    status: str | None,
    *,
    cancel_requested: bool = False,
    lease_live: bool = False,
    force: bool = False,
) -> Decision:
    """The replay rule. A letter is removed only when the request is runnable afterwards
    (its message is on the work queue, confirmed) or has nothing left to run."""
    if status in DONE:
        return Decision(Plan.DROP, f"request is {status}: not run twice")
    if status == "cancelled" or cancel_requested:
        if force:
            return Decision(Plan.FORCE, "forced: cancel cleared")
        return Decision(
            Plan.REFUSE,
            f"request {request_id} was cancelled; "
            "replay with --force to clear the cancel and run it",
        )
    if status is None or status == "failed":
        return Decision(Plan.REPLAY, f"status {status or 'unrecorded'}")
    if status in WAITING:
        # A duplicate message is harmless: the claim runs the request once.
        return Decision(Plan.REPUBLISH, f"request is {status}: its message republished")
    if status == "running":
        if lease_live:
            return Decision(Plan.DROP, "request is running under a live lease")
        return Decision(
            Plan.KEEP,
            "request is running but its lease expired: a worker's reaper requeues it; "
            "replay again later",
        )
    return Decision(Plan.KEEP, f"request is {status}")


async def replay(
    dlq: DeadLetterQueue,
    db: store_mod.Store,
    selection: Selection,
    *,
    actor: str,
    keep_attempts: bool = False,
    force: bool = False,
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
                    dlq,
                    db,
                    item,
                    replayed,
                    actor=actor,
                    keep=keep_attempts,
                    force=force,
                    dry_run=dry_run,
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
    force: bool,
    dry_run: bool,
) -> Outcome:
    letter = item.letter
    try:
        event = events.parse_file_requested(item.message.body)
    except (events.InvalidEventError, ValueError, RecursionError) as exc:
        # Replaying would only dead-letter it again (and a failed row must not be left
        # queued with no runnable message): keep it until it is fixed or purged.
        why = getattr(exc, "reason", type(exc).__name__)
        text = dlq_letter.cut(dlq_letter.clean(f"{exc}"), 500, dlq_letter.Notes(), "error")
        return Outcome(letter.key, "kept", f"still invalid ({why}): {text}")
    key = str(event.id)
    if key in replayed:
        # A second letter for a request already put back in this run (a dead letter
        # published twice around a crash): one replay is enough.
        if not dry_run:
            await item.ack()
        return Outcome(letter.key, "duplicate", "request already replayed", removed=not dry_run)
    if dry_run:
        row = await db.get_request(event.id)
        lease = row.lease_expires_at if row else None
        decision = decide(
            key,
            row.status if row else None,
            cancel_requested=bool(row and row.cancel_requested),
            lease_live=lease is not None and lease > datetime.now(UTC),
            force=force,
        )
        if decision.plan.publishes:
            replayed.add(key)
            return Outcome(letter.key, "would-replay", decision.why)
        result = "would-refuse" if decision.plan is Plan.REFUSE else "would-skip"
        return Outcome(letter.key, result, decision.why)

    async def publish(replays: int) -> None:
        await dlq.publish_request(item.message.body, key, replays)

    def rule(status: str | None, cancel_requested: bool, lease_live: bool) -> Decision:
        return decide(
            key, status, cancel_requested=cancel_requested, lease_live=lease_live, force=force
        )

    try:
        decision, replays = await dlq_store.requeue(
            db,
            event.id,
            letter=letter,
            actor=actor,
            keep_attempts=keep,
            decide=rule,
            publish=publish,
        )
    except broker.PublishError as exc:
        raise DlqError(f"replay of {key} stopped: {exc}") from exc
    if decision.removes:
        await item.ack()  # only now: any republish is confirmed and the row committed
    if decision.plan.publishes:
        replayed.add(key)
        return Outcome(letter.key, "replayed", f"{decision.why} (replay #{replays})", removed=True)
    result = "refused" if decision.plan is Plan.REFUSE else "skipped"
    return Outcome(letter.key, result, decision.why, removed=decision.removes)


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


async def purge_undecodable(
    dlq: DeadLetterQueue, db: store_mod.Store, *, actor: str, dry_run: bool = False
) -> Report:
    """Remove the first letter the client cannot decode (see ``UndecodableLetterError``).

    It cannot be read, so it is found by position: the letters before it are taken and
    held unacknowledged, then it is taken with ``no_ack``: the broker forgets a message
    the moment it sends it in that mode
    (https://www.rabbitmq.com/docs/confirms#acknowledgement-modes), so decoding it is not
    needed. Its failure to decode closes the connection, which returns the held letters
    to their places. Should the queue have changed in between, so that the letter taken
    decodes after all, it is published back to the dead-letter exchange (confirmed) and
    reported, not lost.
    """
    report = Report("purge", dry_run)
    try:
        async with contextlib.aclosing(dlq.scan()) as held:
            async for _ in held:
                report.scanned += 1
    except UndecodableLetterError as exc:
        position, error = exc.position, exc.error
    else:
        return report  # every letter decodes: nothing to do
    await dlq.connect()
    key = f"undecodable#{position + 1}"
    if dry_run:
        report.outcomes.append(Outcome(key, "would-purge", error))
        return report
    channel = await dlq.connection.channel()
    queue = await channel.get_queue(dlq.name, ensure=False)
    try:
        for _ in range(position):
            if await queue.get(no_ack=False, fail=False, timeout=GET_TIMEOUT) is None:
                raise DlqError("the dead-letter queue changed meanwhile: run it again")
        taken = await queue.get(no_ack=True, fail=False, timeout=GET_TIMEOUT)
    except aiormq.exceptions.InvalidFrameError:
        await dlq.connect()
        await dlq_store.record_purge(db, _undecodable_letter(key, error), actor=actor)
        report.outcomes.append(Outcome(key, "purged", error, removed=True))
        return report
    else:
        if taken is not None:
            await _put_back(dlq, taken)
        report.outcomes.append(Outcome(key, "skipped", "the queue changed meanwhile: run it again"))
    await dlq.connect()
    return report


def _undecodable_letter(key: str, error: str) -> dlq_letter.Letter:
    return dlq_letter.Letter(
        key=key,
        request_id=None,
        file_type=None,
        reason="undecodable",
        error_class="InvalidFrameError",
        error=dlq_letter.clean(error),
        attempts=None,
        first_death=None,
        last_death=None,
        worker=None,
        size=0,
    )


async def _put_back(dlq: DeadLetterQueue, message: AbstractIncomingMessage) -> None:
    copy = aio_pika.Message(
        message.body,
        headers=message.headers,
        content_type=message.content_type,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=message.message_id,
    )
    channel = await broker.open_channel(dlq.connection)  # type: ignore[arg-type]
    try:
        await broker.publish(channel, dlq.topology.dead_exchange, "", copy)
    finally:
        await channel.close()
