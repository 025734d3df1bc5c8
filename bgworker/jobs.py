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
import json
import logging
import time
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from bgworker import broker, events, handlers, metrics, outbox, storage, store, topology
from bgworker import settings as settings_mod

log = logging.getLogger(__name__)

TRACEBACK_LIMIT: Final = 2000
ERROR_LIMIT: Final = 1000


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
        "x-bgworker-error": _short(letter.error, ERROR_LIMIT),
        "x-bgworker-attempts": letter.attempts,
        "x-bgworker-worker": worker_id,
        "x-bgworker-failed-at": datetime.now(UTC).isoformat(),
        "x-bgworker-routing-key": routing_key or topology.REQUESTED_KEY,
    }
    if letter.traceback:
        headers["x-bgworker-traceback"] = _short(letter.traceback, TRACEBACK_LIMIT)
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
        """Process one delivery; returns the outcome (for logs, metrics and tests)."""
        try:
            event = events.parse_file_requested(message.body)
        except events.InvalidEventError as exc:
            await self._reject_invalid(message, exc)
            return "invalid"
        registration = self.registry.find(event.file_type)
        max_attempts = (registration.max_attempts if registration else None) or (
            self.settings.worker.max_attempts
        )
        claim = await self.db.record_and_claim(event, max_attempts, self.worker_id, self._lease)
        if claim is None:
            # Ready, failed, cancelled, or running under another worker's live lease: this
            # delivery is a duplicate (redelivery, double publish). PostgreSQL has it covered.
            await _ack(message)
            log.info("request %s: not runnable (duplicate delivery), acked", event.id)
            return "duplicate"
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

    async def _reject_invalid(
        self, message: AbstractIncomingMessage, exc: events.InvalidEventError
    ) -> None:
        log.warning("rejecting message %s: %s: %s", message.message_id, exc.reason, exc)
        if exc.request_id is not None:
            try:
                # NUL characters (rejected by validation) cannot be stored in jsonb either.
                raw: object = events.strip_nul(json.loads(message.body))
            except ValueError:
                raw = {"body": message.body.decode("utf-8", "replace")[:2000]}
            await self.db.insert_invalid_request(
                exc.request_id,
                raw,
                exc.reason,
                "InvalidEventError",
                str(exc),
                effects=outbox.failed_effects,
            )
        letter = DeadLetter(exc.reason, "InvalidEventError", str(exc), attempts=0)
        await self._dead_letter(message.body, letter, message.message_id, message.routing_key)
        await message.ack()  # only after the dead letter is confirmed: raise if we cannot

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
            # Lease lost between the last heartbeat and now: another attempt owns the request.
            await self.files.delete(key)
            metrics.JOBS.labels("lost").inc()
            return "lost"
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
                log.warning("request %s: lease lost, stopping the handler", claim.request_id)
                lost.set()
                job.cancel()
                return

    async def _after_lost_lease(self, claim: store.Claim) -> str:
        row = await self.db.get_request(claim.request_id)
        if row is not None and row.cancel_requested and row.status == "running":
            await self.db.mark_cancelled(claim)
            metrics.JOBS.labels("cancelled").inc()
            log.info("request %s: cancelled while running", claim.request_id)
            return "cancelled"
        metrics.JOBS.labels("lost").inc()
        return "lost"

    async def _release(self, claim: store.Claim) -> str:
        async def republish(event: dict[str, Any]) -> None:
            await broker.publish(
                self.channel,
                self.topology.requests_exchange,
                topology.REQUESTED_KEY,
                broker.request_message(event, str(claim.request_id)),
            )

        await self.db.release(claim, republish)
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

        await self.db.mark_retrying(
            claim,
            error_class=type(exc).__name__,
            error=error,
            next_run_at=next_run,
            publish=publish_retry,
        )
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
            return "lost"
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
