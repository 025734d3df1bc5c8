"""Replay and purge: the actions that change the dead-letter queue.

Both act during a scan (``queue.DeadLetterQueue.scan``): a selected letter is acknowledged
(removed) only after its effect is done: for replay, the republish to the requests
exchange has been confirmed by the broker *and* the request row change has committed; for
purge, the purge has been recorded. Anything interrupted is still in the queue and can be
acted on again; re-running a replay skips the requests the interrupted one already put
back. What replay does with each letter is the replay rule (``rule.decide``).
"""

from __future__ import annotations

import contextlib
import enum
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from bgworker import store
from bgworker.contract import events
from bgworker.messaging import broker
from bgworker.ops.deadletters import letters, queue, rule, selection
from bgworker.store import dead_letters

# The reason and error class recorded for a letter purged unread.
UNDECODABLE: Final = "undecodable"
UNDECODABLE_CLASS: Final = "InvalidFrameError"


class Result(enum.StrEnum):
    """What became of one selected letter (CLI, console and ``--json`` show the value)."""

    REPLAYED = "replayed"
    PURGED = "purged"
    SKIPPED = "skipped"  # the rule said drop (removed) or keep (kept)
    REFUSED = "refused"  # cancelled request, no --force: kept
    KEPT = "kept"  # its body is still not a valid request
    DUPLICATE = "duplicate"  # a second letter for a request replayed in this run: removed
    WOULD_REPLAY = "would-replay"
    WOULD_PURGE = "would-purge"
    WOULD_SKIP = "would-skip"
    WOULD_REFUSE = "would-refuse"


@dataclass(frozen=True)
class Outcome:
    key: str
    result: Result
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


def facts(letter: letters.Letter) -> dead_letters.LetterFacts:
    """What the action record keeps of a letter."""
    return dead_letters.LetterFacts(
        key=letter.key,
        request_id=letter.request_id,
        reason=letter.reason,
        error_class=letter.error_class,
        error=letter.error,
        failed_at=letter.last_death,
    )


async def replay(
    dlq: queue.DeadLetterQueue,
    db: store.Store,
    chosen: selection.Selection,
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
            if chosen.matches(item.letter, now):
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
    dlq: queue.DeadLetterQueue,
    db: store.Store,
    item: queue.Held,
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
        text = letters.cut(letters.clean(f"{exc}"), 500, letters.Notes(), "error")
        return Outcome(letter.key, Result.KEPT, f"still invalid ({why}): {text}")
    key = str(event.id)
    if key in replayed:
        # A second letter for a request already put back in this run (a dead letter
        # published twice around a crash): one replay is enough.
        if not dry_run:
            await item.ack()
        removed = not dry_run
        return Outcome(letter.key, Result.DUPLICATE, "request already replayed", removed=removed)
    if dry_run:
        return await _plan_one(db, event.id, letter.key, replayed, force=force)

    async def publish(replays: int) -> None:
        await dlq.publish_request(item.message.body, key, replays)

    def decide(state: dead_letters.RequestState) -> rule.Decision:
        return rule.decide_for(key, state, force=force)

    try:
        decision, replays = await db.dead_letters.requeue(
            event.id,
            letter=facts(letter),
            actor=actor,
            keep_attempts=keep,
            decide=decide,
            publish=publish,
        )
    except broker.PublishError as exc:
        raise queue.DlqError(f"replay of {key} stopped: {exc}") from exc
    if decision.removes:
        await item.ack()  # only now: any republish is confirmed and the row committed
    if decision.plan.publishes:
        replayed.add(key)
        return Outcome(
            letter.key, Result.REPLAYED, f"{decision.why} (replay #{replays})", removed=True
        )
    result = Result.REFUSED if decision.plan is rule.Plan.REFUSE else Result.SKIPPED
    return Outcome(letter.key, result, decision.why, removed=decision.removes)


async def _plan_one(
    db: store.Store, request_id: uuid.UUID, letter_key: str, replayed: set[str], *, force: bool
) -> Outcome:
    """What replay would do with one letter (dry run: nothing locked, nothing changed)."""
    key = str(request_id)
    row = await db.requests.get_request(request_id)
    lease = row.lease_expires_at if row else None
    decision = rule.decide(
        key,
        row.status if row else None,
        cancel_requested=bool(row and row.cancel_requested),
        lease_live=lease is not None and lease > datetime.now(UTC),
        force=force,
        # As dlq_lock_request reads it.
        placeholder=row is not None
        and ((row.status == "cancelled" and not row.event) or row.scrubbed_at is not None),
    )
    if decision.plan.publishes:
        replayed.add(key)
        return Outcome(letter_key, Result.WOULD_REPLAY, decision.why)
    result = Result.WOULD_REFUSE if decision.plan is rule.Plan.REFUSE else Result.WOULD_SKIP
    return Outcome(letter_key, result, decision.why)


async def purge(
    dlq: queue.DeadLetterQueue,
    db: store.Store,
    chosen: selection.Selection,
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
            if chosen.matches(item.letter, now):
                if dry_run:
                    report.outcomes.append(Outcome(item.letter.key, Result.WOULD_PURGE))
                else:
                    await db.dead_letters.record_purge(facts(item.letter), actor=actor)
                    await item.ack()
                    report.outcomes.append(Outcome(item.letter.key, Result.PURGED, removed=True))
            if progress is not None:
                progress(report.scanned, total)
    return report


async def purge_undecodable(
    dlq: queue.DeadLetterQueue, db: store.Store, *, actor: str, dry_run: bool = False
) -> Report:
    """Remove the first letter the client cannot decode (see
    ``queue.UndecodableLetterError``), by position, unread (``queue.drop_undecodable``)."""
    report = Report("purge", dry_run)
    try:
        async with contextlib.aclosing(dlq.scan()) as held:
            async for _ in held:
                report.scanned += 1
    except queue.UndecodableLetterError as exc:
        position, error = exc.position, exc.error
    else:
        return report  # every letter decodes: nothing to do
    await dlq.connect()
    key = f"undecodable#{position + 1}"
    if dry_run:
        report.outcomes.append(Outcome(key, Result.WOULD_PURGE, error))
        return report
    if await dlq.drop_undecodable(position):
        unread = dead_letters.LetterFacts(
            key=key,
            reason=UNDECODABLE,
            error_class=UNDECODABLE_CLASS,
            error=letters.clean(error),
        )
        await db.dead_letters.record_purge(unread, actor=actor)
        report.outcomes.append(Outcome(key, Result.PURGED, error, removed=True))
    else:
        report.outcomes.append(
            Outcome(key, Result.SKIPPED, "the queue changed meanwhile: run it again")
        )
    return report
