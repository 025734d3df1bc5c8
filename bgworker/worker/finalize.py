"""The outcome of a claimed attempt, committed fenced on its lease token.

ready, retrying, failed, cancelled, released: each is an ``UPDATE ... WHERE lease_token =
$token`` (see ``store``), so a worker that lost its lease changes nothing; it deletes the
file it built and reports the attempt ``lost``. A retry is published to its delay queue,
and a dead letter to the dead-letter exchange, inside the transaction that records the
outcome: the row changes only once the broker has confirmed the message.
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aio_pika.abc import AbstractChannel

from bgworker import handlers, settings, storage, store
from bgworker.contract import progress, states
from bgworker.effects import outcomes
from bgworker.messaging import broker, topology, wire

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Finalizer:
    db: store.Store
    files: storage.Storage
    channel: AbstractChannel
    topology: topology.Topology
    worker_id: str
    max_attempts: int  # unless the claim carries the handler's own
    webhooks: settings.WebhookSettings  # the deployment's webhook (a request's own wins)

    def ready_effects(self, row: store.RequestRow) -> list[tuple[str, dict[str, Any]]]:
        """What a ready request causes (email, ``FileReady``, webhooks), however it got its
        file: built here, or reused by ``dedupe``."""
        return outcomes.ready_effects(row, webhook_url=self.webhooks.url)

    def failed_effects(self, row: store.RequestRow) -> list[tuple[str, dict[str, Any]]]:
        return outcomes.failed_effects(row, webhook_url=self.webhooks.url)

    async def ready(
        self,
        claim: store.Claim,
        *,
        key: str,
        size: int,
        digest: str,
        reported: progress.Progress | None = None,
    ) -> states.JobOutcome:
        row = await self.db.ready.mark_ready(
            claim,
            size=size,
            sha256=digest,
            storage_key=key,
            effects=self.ready_effects,
            reported=reported,
        )
        if row is None:
            # A cancel arrived while the handler ran (cancellation wins), or the lease was
            # lost between the last renewal and now: either way this file is not served.
            await self.files.delete(key)
            return await self.cancelled_or_lost(claim)
        log.info("request %s: ready (%d bytes, sha256 %s)", claim.request_id, size, digest[:12])
        return states.JobOutcome.READY

    async def cancelled_or_lost(self, claim: store.Claim) -> states.JobOutcome:
        """A fenced outcome was refused: end the attempt as cancelled if a cancel is pending
        and the lease is still ours, else it was lost to another worker."""
        if await self.db.requests.cancel_claimed(claim):
            log.info("request %s: cancelled while running", claim.request_id)
            return states.JobOutcome.CANCELLED
        log.warning(
            "request %s: lease lost; another attempt owns the request now", claim.request_id
        )
        return states.JobOutcome.LOST

    async def release(self, claim: store.Claim) -> states.JobOutcome:
        """Shutdown: the row back to queued (attempt uncounted), the request republished in
        the same transaction."""

        async def republish(event: dict[str, Any]) -> None:
            await broker.put_back(self.channel, self.topology, event, str(claim.request_id))

        if not await self.db.requests.release(claim, republish):
            return await self.cancelled_or_lost(claim)
        log.info("request %s: released back to the queue (shutdown)", claim.request_id)
        return states.JobOutcome.RELEASED

    async def after_error(
        self, claim: store.Claim, body: bytes, exc: Exception
    ) -> states.JobOutcome:
        """The handler raised: retry after the attempt's delay tier, or fail for good."""
        if isinstance(exc, handlers.PermanentError):
            return await self.fail(claim, body, exc, reason=states.Reason.PERMANENT_ERROR)
        if claim.attempt >= (claim.max_attempts or self.max_attempts):
            return await self.fail(claim, body, exc, reason=states.Reason.MAX_ATTEMPTS)
        delay = self.topology.retry_delay(claim.attempt)
        next_run = datetime.now(UTC) + timedelta(seconds=delay)
        error = wire.shorten(f"{exc}", wire.ERROR_LIMIT)

        async def publish_retry() -> None:
            await broker.publish_retry(
                self.channel, self.topology, body, str(claim.request_id), delay
            )

        retrying = await self.db.requests.mark_retrying(
            claim,
            error_class=type(exc).__name__,
            error=error,
            next_run_at=next_run,
            publish=publish_retry,
        )
        if not retrying:
            return await self.cancelled_or_lost(claim)
        log.warning(
            "request %s: attempt %d failed (%s: %s); retry in %.1fs",
            claim.request_id,
            claim.attempt,
            type(exc).__name__,
            error,
            delay,
        )
        return states.JobOutcome.RETRYING

    async def fail(
        self, claim: store.Claim, body: bytes, exc: BaseException, *, reason: states.Reason
    ) -> states.JobOutcome:
        error_class = type(exc).__name__
        error = wire.shorten(str(exc), wire.ERROR_LIMIT)
        letter = wire.DeadLetter(
            reason=reason,
            error_class=error_class,
            error=error,
            attempts=claim.attempt,
            traceback="".join(traceback.format_exception(exc, limit=8)),
        )

        async def publish_dead_letter() -> None:
            await broker.publish_dead_letter(
                self.channel,
                self.topology,
                body,
                letter,
                worker_id=self.worker_id,
                message_id=str(claim.request_id),
                routing_key=topology.REQUESTED_KEY,
            )

        # Confirmed into the dead-letter queue inside the transaction that marks it failed.
        row = await self.db.requests.mark_failed(
            claim,
            reason=reason,
            error_class=error_class,
            error=error,
            effects=self.failed_effects,
            publish=publish_dead_letter,
        )
        if row is None:
            return await self.cancelled_or_lost(claim)
        log.warning(
            "request %s: failed (%s) after %d attempt(s): %s: %s",
            claim.request_id,
            reason,
            claim.attempt,
            error_class,
            error,
        )
        return states.JobOutcome.FAILED
