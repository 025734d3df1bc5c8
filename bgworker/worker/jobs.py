"""One delivery, from message to committed outcome.

    decode -> record -> claim (lease) -> ack -> run handler (lease kept) -> finalize

The message is acknowledged once the claim is committed: from then on PostgreSQL owns the
job, so a job may run longer than the broker's consumer timeout, and if the worker dies the
lease expires and the reaper puts the request back on the queue. Every outcome after that
(ready, retrying, failed, cancelled, released) is a fenced update on the lease token, so a
worker that lost its lease can change nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from bgworker import faults, handlers, storage, store
from bgworker import settings as settings_mod
from bgworker.contract import events, progress, states
from bgworker.handlers import execution
from bgworker.messaging import topology
from bgworker.observe import logs, metrics, tracing
from bgworker.worker import acking, dedupe, fairness, finalize, rejection

log = logging.getLogger(__name__)

# The file_type label of attempts whose type has no handler: one series however many
# unknown names producers send (a file type cannot start with "_", so none collides).
UNKNOWN_FILE_TYPE_LABEL: Final = "_unknown"

# Progress a handler reports is saved at most this often, so a status page is at most about
# a second behind a handler that reports on every row. The progress saver looks for new
# progress every PROGRESS_POLL_SECONDS, so a first report after a quiet spell shows sooner.
PROGRESS_SECONDS: Final = 1.0
PROGRESS_POLL_SECONDS: Final = 0.25


@dataclass(kw_only=True)
class Runner:
    """Runs deliveries. Built complete by the worker; ``releasing`` is set on a drain
    timeout, so the jobs it then cancels are released rather than left to the reaper."""

    # The whole deployment's settings: every job's context carries them, and each part
    # below takes its own piece from them, complete (no piece to forget to pass).
    settings: settings_mod.Settings
    registry: handlers.Registry
    db: store.Store
    files: storage.Storage
    channel: AbstractChannel
    topology: topology.Topology
    worker_id: str
    # Renews the leases of running jobs from its own thread (see store.leases).
    leases: store.LeaseKeeper
    # What every job's context carries besides the settings: the resources its registries'
    # lifespans opened (see handlers.Registry.resources).
    resources: Mapping[str, Any] = field(default_factory=lambda: handlers.NO_RESOURCES)
    releasing: bool = False
    # The job channel's acks: those of a batch claimed together go out as one (acking).
    acks: acking.Acks = field(default_factory=acking.Acks)
    config: settings_mod.WorkerSettings = field(init=False)  # settings.worker
    # Runs the handlers: sync ones on threads, time limits (see execution.Execution).
    execution: execution.Execution = field(init=False)
    finalizer: finalize.Finalizer = field(init=False)
    rejecter: rejection.Rejecter = field(init=False)
    fair: fairness.FairShare = field(init=False)  # the claim, through caps when set

    def __post_init__(self) -> None:
        self.config = self.settings.worker
        threads = min(self.config.concurrency, self.config.handler_threads)
        self.execution = execution.Execution(threads, self.config.time_limit_seconds)
        self.finalizer = finalize.Finalizer(
            db=self.db,
            files=self.files,
            channel=self.channel,
            topology=self.topology,
            worker_id=self.worker_id,
            max_attempts=self.config.max_attempts,
            webhooks=self.settings.webhooks,
        )
        self.fair = fairness.FairShare(
            db=self.db,
            channel=self.channel,
            topology=self.topology,
            limits=self.settings.fairness,
            lease_seconds=self.config.lease_seconds,
        )
        self.rejecter = rejection.Rejecter(
            db=self.db,
            channel=self.channel,
            topology=self.topology,
            worker_id=self.worker_id,
            webhooks=self.settings.webhooks,
        )

    async def handle(self, message: AbstractIncomingMessage) -> states.JobOutcome:
        """Process one delivery; returns the outcome (for logs, metrics and tests).

        Before the ack, only infrastructure errors (``faults.is_infrastructure``) escape, for
        the worker to hold the delivery and retry it in place; anything else the message
        causes ends as a dead letter with a reason, now."""
        # A child of the publisher's span when the message carries one (tracing on).
        parent = tracing.from_headers(message.headers)
        with tracing.span("job", parent=parent, kind="consumer", worker=self.worker_id):
            return await self._handle(message)

    def claim_args(self, event: events.FileRequested) -> tuple[int, tuple[str, str]]:
        """What a claim records ``event`` with: its max attempts, and the filename and content
        type to serve (the handler's fill where the producer left them out)."""
        registration = self.registry.find(event.file_type)
        names = handlers.served_names(event, registration)
        max_attempts = (registration.max_attempts if registration else None) or (
            self.config.max_attempts
        )
        return max_attempts, names

    async def _handle(self, message: AbstractIncomingMessage) -> states.JobOutcome:
        try:
            event = events.parse_file_requested(message.body)
        except events.InvalidEventError as exc:
            # exc.reason is one of events.REASONS, all of them states.Reason values.
            reason = states.Reason(exc.reason)
            request_id = exc.request_id or rejection.request_id_from(message.message_id)
            await self.rejecter.reject(message, reason, "InvalidEventError", str(exc), request_id)
            return states.JobOutcome.INVALID
        logs.bind(request_id=str(event.id), file_type=event.file_type, worker_id=self.worker_id)
        registration = self.registry.find(event.file_type)
        max_attempts, names = self.claim_args(event)
        try:
            with tracing.span("claim", request_id=str(event.id), file_type=event.file_type):
                claim = await self.fair.claim(event, max_attempts, self.worker_id, names)
            if isinstance(claim, store.OverQuota):
                return await self.fair.over_quota(message, event, claim, self.rejecter)
            if isinstance(claim, store.Parked):
                # Over a cap: recorded parked, so the delivery is done with (fairness).
                await _ack(self.acks, message)
                self.fair.parked(event)
                return states.JobOutcome.PARKED
            if claim is None:
                claim = await self._not_runnable(message, event, max_attempts, names)
                if claim is None:
                    return states.JobOutcome.DUPLICATE
        except Exception as exc:
            if faults.is_infrastructure(exc):
                raise
            # Valid as JSON Schema goes, but PostgreSQL refuses it (a value out of its range,
            # text it cannot hold): it would fail the same way on every delivery.
            await self.rejecter.reject(
                message,
                states.Reason.UNSTORABLE,
                type(exc).__name__,
                f"the event could not be recorded: {exc}",
                event.id,
            )
            return states.JobOutcome.UNSTORABLE
        await _ack(self.acks, message)
        logs.bind(attempt=claim.attempt)
        outcome = await self.attempt(event, claim, registration, message.body)
        # Its slot is free (the outcome is committed): a parked request may fit now.
        await self.fair.freed(event)
        return outcome

    async def attempt(
        self,
        event: events.FileRequested,
        claim: store.Claim,
        registration: handlers.Registration | None,
        body: bytes,
    ) -> states.JobOutcome:
        """A claimed request run to its outcome (a delivery's, or a parked one: sharing)."""
        if registration is None:
            return await self._counted(
                UNKNOWN_FILE_TYPE_LABEL,
                self.finalizer.fail(
                    claim,
                    body,
                    handlers.UnknownFileTypeError(
                        f"no handler for file_type {event.file_type!r} "
                        f"(registered: {', '.join(self.registry.file_types) or 'none'})"
                    ),
                    reason=states.Reason.UNKNOWN_FILE_TYPE,
                ),
            )
        filled = handlers.with_defaults(event, registration)
        return await self._counted(event.file_type, self._run(filled, claim, registration, body))

    async def _counted(
        self, file_type: str, attempt: Awaitable[states.JobOutcome]
    ) -> states.JobOutcome:
        """An attempt's outcome, counted by file type (not when the attempt is cancelled
        without an outcome: a worker stopping at once)."""
        outcome = await attempt
        metrics.JOBS.labels(file_type, outcome).inc()
        return outcome

    async def _not_runnable(
        self,
        message: AbstractIncomingMessage,
        event: events.FileRequested,
        max_attempts: int,
        names: tuple[str, str],
    ) -> store.Claim | None:
        """The id is recorded and the claim refused. Returns a claim when this event
        supersedes a request that failed validation; otherwise settles the delivery as a
        duplicate or, when its body differs from the recorded one, a conflicting duplicate."""
        row = await self.db.requests.get_request(event.id)
        if (
            row is not None
            and row.status == states.Status.FAILED
            and row.failure_reason in states.SUPERSEDABLE
        ):
            claim = await self.db.requests.supersede_invalid(
                event,
                max_attempts,
                self.worker_id,
                self.config.lease_seconds,
                states.SUPERSEDABLE,
                names,
            )
            if claim is not None:
                log.info(
                    "request %s: a valid event superseded the one rejected (%s)",
                    event.id,
                    row.failure_reason,
                )
                return claim
        if row is not None and not row.body_kept:
            # A cancel that came first (placeholder), or a row retention or erasure scrubbed:
            # nothing to compare with, and nothing to run.
            await _ack(self.acks, message)
            log.info("request %s: %s, not run; acked", event.id, _why_not(row))
            return None
        if row is not None and not events.same_request(row.event, event):
            fields = ", ".join(events.differing_fields(row.event, event)) or "?"
            await self.rejecter.reject(
                message,
                states.Reason.CONFLICTING_DUPLICATE,
                "ConflictingDuplicateError",
                f"request {event.id} is already recorded ({row.status}) with a different body "
                f"(fields that differ: {fields}); the recorded request is unchanged",
                None,  # never touch the recorded request's row
            )
            return None
        # Ready, failed, cancelled, or running under another worker's live lease: this
        # delivery is a duplicate (redelivery, double publish). PostgreSQL has it covered.
        await _ack(self.acks, message)
        log.info("request %s: not runnable (duplicate delivery), acked", event.id)
        return None

    async def _run(
        self,
        event: events.FileRequested,
        claim: store.Claim,
        registration: handlers.Registration,
        body: bytes,
    ) -> states.JobOutcome:
        ctx = handlers.JobContext(
            event,
            claim.attempt,
            self.worker_id,
            logging.getLogger(f"bgworker.job.{event.file_type}"),
            settings=self.settings,
            resources=self.resources,
        )
        key = storage.key_for(event.id, claim.lease_token)
        writer = self.files.writer(key)
        job = asyncio.current_task()
        assert job is not None
        lost = asyncio.Event()
        started = time.monotonic()

        def stop_job() -> None:
            # Cancelled, or taken over after the lease expired: the finalizer says which once
            # the handler has stopped. ctx.cancelled turns true first, so an async handler
            # that catches the cancellation still sees why. Once: the keeper and the progress
            # saver may both find out, and a second cancel would interrupt the finalizer.
            if lost.is_set():
                return
            self.leases.drop(claim)
            log.info("request %s: lease gone, stopping the handler", claim.request_id)
            ctx.stop(handlers.StoppedError("the request was cancelled or its lease lost"))
            lost.set()
            job.cancel()

        # The lease is renewed from the keeper's own thread, whatever the handler does to this
        # loop (see store.leases); progress is saved from this loop. The progress saver's
        # first look is one poll interval away: a timer until then, and a task only for a job
        # still running then (most end sooner: a task per job cost more; BENCHMARKS.md, #11).
        self.leases.hold(claim, stop_job)
        beat: list[asyncio.Task[None]] = []

        def start_beat() -> None:
            beat.append(
                asyncio.create_task(
                    self._save_progress(claim, ctx, stop_job), name=f"progress-{event.id}"
                )
            )

        timer = asyncio.get_running_loop().call_later(self._poll_seconds(), start_beat)
        in_flight = metrics.IN_FLIGHT.labels(event.file_type)
        in_flight.inc()
        log.info("request %s: attempt %d of %s started", event.id, claim.attempt, event.file_type)
        try:
            try:
                if registration.dedupe_seconds:
                    # A ready identical file to reuse, or one being built to wait for.
                    settled = await dedupe.settle(
                        self.db, self.finalizer, claim, event, registration.dedupe_seconds
                    )
                    if settled is not None:
                        await writer.abort()  # nothing built: drop what it may have left
                        return settled
                # Raises handlers.TimeLimitError past the time limit: an ordinary error below.
                limit = self.execution.time_limit(registration)
                self.leases.bound(claim, limit and limit + self.config.lease_seconds)
                with tracing.span("handler", file_type=event.file_type, attempt=claim.attempt):
                    await self.execution.call(registration, ctx, writer)
                self.leases.bound(claim, None)  # storing the file is not the handler's time
                size, digest = await writer.finish()
            finally:
                # Before any outcome: from here on a lease found gone must not cancel the
                # finalizer (its writes are fenced on the token anyway).
                self.leases.drop(claim)
                timer.cancel()
                for task in beat:
                    task.cancel()
        except asyncio.CancelledError:
            await writer.abort()
            if lost.is_set():
                return await self.finalizer.cancelled_or_lost(claim)
            if self.releasing:
                return await self.finalizer.release(claim)
            raise
        except Exception as exc:
            await writer.abort()
            return await self.finalizer.after_error(claim, body, exc)
        finally:
            in_flight.dec()
            metrics.JOB_SECONDS.labels(event.file_type).observe(time.monotonic() - started)
        return await self.finalizer.ready(
            claim, key=key, size=size, digest=digest, reported=ctx.reported
        )

    def _poll_seconds(self) -> float:
        return min(PROGRESS_POLL_SECONDS, self.config.lease_seconds / 3)

    async def _save_progress(
        self, claim: store.Claim, ctx: handlers.JobContext, stop_job: Callable[[], None]
    ) -> None:
        """Save new progress within about a second of its report (one fenced UPDATE, which
        renews the lease too); a write that finds the lease gone (a cancel, a takeover)
        stops the handler. Started one poll interval after the claim, which reset the
        row's progress."""
        saved: progress.Progress | None = None
        last_write = 0.0
        waited = True  # the timer that started this task waited the first interval
        while True:
            if not waited:
                await asyncio.sleep(self._poll_seconds())
            waited = False
            reported = ctx.reported  # one read: a handler thread may replace it meanwhile
            if reported == saved or time.monotonic() - last_write < PROGRESS_SECONDS:
                continue
            try:
                alive = await self.db.requests.heartbeat(claim, self.config.lease_seconds, reported)
            except Exception as exc:
                # PostgreSQL away: the lease keeper reports it; try again in a second.
                log.debug("request %s: progress not saved: %s", claim.request_id, exc)
                last_write = time.monotonic()
                continue
            saved, last_write = reported, time.monotonic()
            if not alive:
                stop_job()
                return


async def _ack(acks: acking.Acks, message: AbstractIncomingMessage) -> None:
    """Ack after the claim committed (with its batch: ``acking``). A channel dead meanwhile:
    the message comes back and is recognised as a duplicate; the job still runs here."""
    try:
        await acks.ack(message)
    except Exception as exc:
        # The channel went with a lost connection (said once by faults.report): routine.
        log.log(
            faults.level(exc, f"ack of {message.message_id}"),
            "ack of %s failed (%s); its redelivery will be dropped as a duplicate",
            message.message_id,
            logs.describe(exc),
        )


def _why_not(row: store.RequestRow) -> str:
    if row.scrubbed_at is not None:
        return "its record was scrubbed (retention or erasure)"
    return "cancelled before it arrived"
