"""One delivery, from message to committed outcome.

    decode -> record -> claim (lease) -> ack -> run handler (heartbeat) -> finalize

The message is acknowledged once the claim is committed: from then on PostgreSQL owns the
job, so a job may run longer than the broker's consumer timeout, and if the worker dies the
lease expires and the reaper puts the request back on the queue. Every outcome after that
(ready, retrying, failed, cancelled, released) is a fenced update on the lease token, so a
worker that lost its lease can change nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from bgworker import broker, events, faults, handlers, metrics, outbox, storage, store, topology
from bgworker import settings as settings_mod

log = logging.getLogger(__name__)

TRACEBACK_LIMIT: Final = 2000
ERROR_LIMIT: Final = 1000
# Dead-letter reasons decided here (validation's own are on events.InvalidEventError).
UNSTORABLE: Final = "unstorable"
CONFLICTING_DUPLICATE: Final = "conflicting_duplicate"
# A request that failed for one of these reasons never ran: publishing a valid event under
# the same id replaces it. Anything else that failed for good comes back only by replay.
SUPERSEDABLE: Final = frozenset(
    {"invalid_schema", "unsupported_schema_version", "malformed_json", UNSTORABLE}
)


class LeaseLostError(Exception):
    """The heartbeat found the lease gone: cancelled, or taken over after expiry."""


class _Released(Exception):
    pass


@dataclass
class DeadLetter:
    reason: str
    error_class: str
    error: str
    attempts: int
    traceback: str = ""


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _header_text(text: str, limit: int) -> str:
    """Valid UTF-8 for an AMQP header: a lone surrogate in an error text (quoting a hostile
    event) would make the dead letter itself unpublishable."""
    return _short(text, limit).encode("utf-8", "backslashreplace").decode("utf-8")


def same_request(recorded: dict[str, Any], event: events.FileRequested) -> bool:
    """Whether ``event`` is the request already recorded under its id (the same comparison
    as record_and_claim's: jsonb equality, requested_at only when the producer set it)."""
    return not differing_fields(recorded, event)


def differing_fields(recorded: dict[str, Any], event: events.FileRequested) -> list[str]:
    new = event.model_dump(mode="json")
    names = set(recorded) | set(new)
    if "requested_at" not in event.model_fields_set:
        names.discard("requested_at")
    return sorted(n for n in names if recorded.get(n) != new.get(n))


def dead_letter_message(
    body: bytes,
    letter: DeadLetter,
    *,
    worker_id: str,
    message_id: str | None,
    routing_key: str | None,
) -> aio_pika.Message:
    """The original body, with headers that say why (read by `bgworker dlq`)."""
    headers: dict[str, Any] = {
        "x-bgworker-reason": letter.reason,
        "x-bgworker-error-class": letter.error_class,
        "x-bgworker-error": _header_text(letter.error, ERROR_LIMIT),
        "x-bgworker-attempts": letter.attempts,
        "x-bgworker-worker": worker_id,
        "x-bgworker-failed-at": datetime.now(UTC).isoformat(),
        "x-bgworker-routing-key": routing_key or topology.REQUESTED_KEY,
    }
    if letter.traceback:
        headers["x-bgworker-traceback"] = _header_text(letter.traceback, TRACEBACK_LIMIT)
    return aio_pika.Message(
        body,
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=message_id,
        headers=headers,
    )


@dataclass
class Runner:
    settings: settings_mod.Settings
    registry: handlers.Registry
    db: store.Store
    files: storage.LocalStorage
    channel: AbstractChannel
    topology: topology.Topology
    dispatcher: outbox.Dispatcher
    worker_id: str
    # Job tasks by request id, so shutdown can cancel and release them.
    running: dict[uuid.UUID, asyncio.Task[None]] = field(default_factory=dict)
    releasing: bool = False
    # Runs the handlers: sync ones on threads, time limits (see handlers.Execution).
    execution: handlers.Execution = field(init=False)

    def __post_init__(self) -> None:
        self.execution = handlers.Execution(
            self.settings.worker.concurrency, self.settings.worker.time_limit_seconds
        )

    @property
    def _lease(self) -> float:
        return self.settings.worker.lease_seconds

    async def handle(self, message: AbstractIncomingMessage) -> str:
        """Process one delivery; returns the outcome (for logs, metrics and tests).

        Before the ack, only infrastructure errors (``faults.is_infrastructure``) escape, for
        the worker to hold the delivery and retry it in place; anything else the message
        causes ends as a dead letter with a reason, now."""
        try:
            event = events.parse_file_requested(message.body)
        except events.InvalidEventError as exc:
            await self.reject(message, exc.reason, "InvalidEventError", str(exc), exc.request_id)
            return "invalid"
        registration = self.registry.find(event.file_type)
        max_attempts = (registration.max_attempts if registration else None) or (
            self.settings.worker.max_attempts
        )
        try:
            claim = await self.db.record_and_claim(event, max_attempts, self.worker_id, self._lease)
            if claim is None:
                claim = await self._not_runnable(message, event, max_attempts)
                if claim is None:
                    return "duplicate"
        except Exception as exc:
            if faults.is_infrastructure(exc):
                raise
            # Valid as JSON Schema goes, but PostgreSQL refuses it (a value out of its range,
            # text it cannot hold): it would fail the same way on every delivery.
            await self.reject(
                message,
                UNSTORABLE,
                type(exc).__name__,
                f"the event could not be recorded: {exc}",
                event.id,
            )
            return "unstorable"
        await _ack(message)
        if registration is None:
            await self._fail(
                claim,
                message.body,
                handlers.UnknownFileTypeError(
                    f"no handler for file_type {event.file_type!r} "
                    f"(registered: {', '.join(self.registry.file_types) or 'none'})"
                ),
                reason="unknown_file_type",
            )
            return "failed"
        return await self._run(event, claim, registration, message.body)

    async def _not_runnable(
        self, message: AbstractIncomingMessage, event: events.FileRequested, max_attempts: int
    ) -> store.Claim | None:
        """The id is recorded and the claim refused. Returns a claim when this event
        supersedes a request that failed validation; otherwise settles the delivery as a
        duplicate or, when its body differs from the recorded one, a conflicting duplicate."""
        row = await self.db.get_request(event.id)
        if row is not None and row.status == "failed" and row.failure_reason in SUPERSEDABLE:
            claim = await self.db.supersede_invalid(
                event, max_attempts, self.worker_id, self._lease, SUPERSEDABLE
            )
            if claim is not None:
                log.info(
                    "request %s: a valid event superseded the one rejected (%s)",
                    event.id,
                    row.failure_reason,
                )
                return claim
        if row is not None and not same_request(row.event, event):
            fields = ", ".join(differing_fields(row.event, event)) or "?"
            await self.reject(
                message,
                CONFLICTING_DUPLICATE,
                "ConflictingDuplicateError",
                f"request {event.id} is already recorded ({row.status}) with a different body "
                f"(fields that differ: {fields}); the recorded request is unchanged",
                None,  # never touch the recorded request's row
            )
            return None
        # Ready, failed, cancelled, or running under another worker's live lease: this
        # delivery is a duplicate (redelivery, double publish). PostgreSQL has it covered.
        await _ack(message)
        log.info("request %s: not runnable (duplicate delivery), acked", event.id)
        return None

    async def reject(
        self,
        message: AbstractIncomingMessage,
        reason: str,
        error_class: str,
        error: str,
        request_id: uuid.UUID | None,
    ) -> None:
        """Dead-letter a delivery that can never be processed, with its reason; when it
        carries a usable id that is not taken yet, record a failed row (and so FileFailed and
        the failure email). Acked only once the dead letter is confirmed."""
        log.warning("rejecting message %s: %s: %s", message.message_id, reason, error)
        if request_id is not None:
            await self._record_rejected(request_id, message.body, reason, error_class, error)
        letter = DeadLetter(reason, error_class, error, attempts=0)
        await self._dead_letter(message.body, letter, message.message_id, message.routing_key)
        await message.ack()  # only after the dead letter is confirmed: raise if we cannot

    async def _record_rejected(
        self, request_id: uuid.UUID, body: bytes, reason: str, error_class: str, error: str
    ) -> None:
        raw = events.storable_body(body)
        try:
            await self.db.insert_invalid_request(
                request_id, raw, reason, error_class, error, effects=outbox.failed_effects
            )
        except Exception as exc:
            if faults.is_infrastructure(exc):
                raise
            # Even the cleaned-up body was refused: keep the reason, drop the body.
            log.warning(
                "request %s: body not recordable (%s); recorded without it", request_id, exc
            )
            await self.db.insert_invalid_request(
                request_id,
                {"body": "(not recordable)"},
                reason,
                error_class,
                _short(error.encode("ascii", "backslashreplace").decode(), ERROR_LIMIT),
                effects=outbox.failed_effects,
            )

    async def _dead_letter(
        self, body: bytes, letter: DeadLetter, message_id: str | None, routing_key: str | None
    ) -> None:
        msg = dead_letter_message(
            body, letter, worker_id=self.worker_id, message_id=message_id, routing_key=routing_key
        )
        await broker.publish(self.channel, self.topology.dead_exchange, "", msg)
        metrics.DEAD_LETTERS.labels(letter.reason).inc()

    async def _run(
        self,
        event: events.FileRequested,
        claim: store.Claim,
        registration: handlers.Registration,
        body: bytes,
    ) -> str:
        ctx = handlers.JobContext(
            event,
            claim.attempt,
            self.worker_id,
            logging.getLogger(f"bgworker.job.{event.file_type}"),
        )
        key = storage.key_for(event.id, claim.lease_token)
        writer = self.files.writer(key)
        job = asyncio.current_task()
        assert job is not None
        self.running[event.id] = job
        lost = asyncio.Event()
        beat = asyncio.create_task(
            self._heartbeat(claim, ctx, job, lost), name=f"heartbeat-{event.id}"
        )
        started = time.monotonic()
        metrics.IN_FLIGHT.inc()
        log.info("request %s: attempt %d of %s started", event.id, claim.attempt, event.file_type)
        try:
            # Raises handlers.TimeLimitError past the time limit: an ordinary error below.
            await self.execution.call(registration, ctx, writer)
            size, digest = await writer.finish()
        except asyncio.CancelledError:
            await writer.abort()
            if lost.is_set():
                return await self._after_lost_lease(claim)
            if self.releasing:
                return await self._release(claim)
            raise
        except Exception as exc:
            await writer.abort()
            return await self._after_error(claim, body, exc)
        finally:
            beat.cancel()
            self.running.pop(event.id, None)
            metrics.IN_FLIGHT.dec()
            metrics.JOB_SECONDS.observe(time.monotonic() - started)
        row = await self.db.mark_ready(
            claim, size=size, sha256=digest, storage_key=key, effects=outbox.ready_effects
        )
        if row is None:
            # A cancel arrived while the handler ran (cancellation wins), or the lease was
            # lost between the last heartbeat and now: either way this file is not served.
            await self.files.delete(key)
            return await self._cancelled_or_lost(claim)
        metrics.JOBS.labels("ready").inc()
        log.info("request %s: ready (%d bytes, sha256 %s)", event.id, size, digest[:12])
        return "ready"

    async def _heartbeat(
        self,
        claim: store.Claim,
        ctx: handlers.JobContext,
        job: asyncio.Task[None],
        lost: asyncio.Event,
    ) -> None:
        interval = self._lease / 3
        while True:
            await asyncio.sleep(interval)
            try:
                alive = await self.db.heartbeat(claim, self._lease, ctx.progress)
            except Exception as exc:  # a dead heartbeat would lose the lease
                # PostgreSQL unreachable: keep working and keep trying; if it stays away past
                # the lease, the fenced finalize refuses and the reaper requeues.
                log.warning("request %s: heartbeat failed: %s", claim.request_id, exc)
                continue
            if not alive:
                # Cancelled, or taken over after the lease expired: _cancelled_or_lost says
                # which once the handler has stopped.
                log.info("request %s: lease gone, stopping the handler", claim.request_id)
                lost.set()
                job.cancel()
                return

    async def _cancelled_or_lost(self, claim: store.Claim) -> str:
        """A fenced outcome was refused: end the attempt as cancelled if a cancel is pending
        and the lease is still ours, else it was lost to another worker."""
        if await self.db.cancel_claimed(claim):
            metrics.JOBS.labels("cancelled").inc()
            log.info("request %s: cancelled while running", claim.request_id)
            return "cancelled"
        metrics.JOBS.labels("lost").inc()
        log.warning(
            "request %s: lease lost; another attempt owns the request now", claim.request_id
        )
        return "lost"

    async def _after_lost_lease(self, claim: store.Claim) -> str:
        return await self._cancelled_or_lost(claim)

    async def _release(self, claim: store.Claim) -> str:
        async def republish(event: dict[str, Any]) -> None:
            await broker.publish(
                self.channel,
                self.topology.requests_exchange,
                topology.REQUESTED_KEY,
                broker.request_message(event, str(claim.request_id)),
            )

        if not await self.db.release(claim, republish):
            return await self._cancelled_or_lost(claim)
        metrics.JOBS.labels("released").inc()
        log.info("request %s: released back to the queue (shutdown)", claim.request_id)
        return "released"

    async def _after_error(self, claim: store.Claim, body: bytes, exc: Exception) -> str:
        max_attempts = claim.max_attempts or self.settings.worker.max_attempts
        if isinstance(exc, handlers.PermanentError) or claim.attempt >= max_attempts:
            reason = (
                "permanent_error" if isinstance(exc, handlers.PermanentError) else ("max_attempts")
            )
            return await self._fail(claim, body, exc, reason=reason)
        delay = self.topology.retry_delay(claim.attempt)
        next_run = datetime.now(UTC) + timedelta(seconds=delay)
        error = _short(f"{exc}", ERROR_LIMIT)

        async def publish_retry() -> None:
            await broker.publish(
                self.channel,
                self.topology.retry_exchange,
                self.topology.retry_key(delay),
                broker.request_message(body, str(claim.request_id)),
            )

        retrying = await self.db.mark_retrying(
            claim,
            error_class=type(exc).__name__,
            error=error,
            next_run_at=next_run,
            publish=publish_retry,
        )
        if not retrying:
            return await self._cancelled_or_lost(claim)
        metrics.JOBS.labels("retrying").inc()
        log.warning(
            "request %s: attempt %d failed (%s: %s); retry in %.1fs",
            claim.request_id,
            claim.attempt,
            type(exc).__name__,
            error,
            delay,
        )
        return "retrying"

    async def _fail(
        self, claim: store.Claim, body: bytes, exc: BaseException, *, reason: str
    ) -> str:
        error_class = type(exc).__name__
        error = _short(str(exc), ERROR_LIMIT)
        letter = DeadLetter(
            reason,
            error_class,
            error,
            claim.attempt,
            "".join(traceback.format_exception(exc, limit=8)),
        )

        async def publish_dead_letter() -> None:
            await self._dead_letter(body, letter, str(claim.request_id), topology.REQUESTED_KEY)

        # Confirmed into the dead-letter queue inside the transaction that marks it failed.
        row = await self.db.mark_failed(
            claim,
            reason=reason,
            error_class=error_class,
            error=error,
            effects=outbox.failed_effects,
            publish=publish_dead_letter,
        )
        if row is None:
            return await self._cancelled_or_lost(claim)
        metrics.JOBS.labels("failed").inc()
        log.warning(
            "request %s: failed (%s) after %d attempt(s): %s: %s",
            claim.request_id,
            reason,
            claim.attempt,
            error_class,
            error,
        )
        return "failed"


async def _ack(message: AbstractIncomingMessage) -> None:
    """Ack after the claim committed. If the channel died meanwhile (broker restart), the
    message comes back and is recognised as a duplicate: the job still runs here."""
    try:
        await message.ack()
    except Exception as exc:
        log.warning(
            "ack of %s failed (%s); its redelivery will be dropped as a duplicate",
            message.message_id,
            exc,
        )


async def cancel_all(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
