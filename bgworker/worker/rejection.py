"""Deliveries that can never be processed: dead-lettered at once, with their reason.

An invalid body, one PostgreSQL cannot store, or a conflicting duplicate would fail the
same way on every delivery, so it is not retried: it goes to the dead-letter exchange with
``x-bgworker-*`` headers that say why, and is acknowledged only once the broker confirmed
the dead letter. When it carries a usable id that is not taken yet, a ``failed`` row is
recorded too (and so ``FileFailed`` and the failure email).
"""

from __future__ import annotations

import functools
import logging
import uuid
from dataclasses import dataclass

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from bgworker import faults, settings, store
from bgworker.contract import events, states
from bgworker.effects import outcomes
from bgworker.messaging import broker, topology, wire

log = logging.getLogger(__name__)


def request_id_from(message_id: str | None) -> uuid.UUID | None:
    """The request id a body that names none (not JSON, nested too deep to decode) still
    carries: producers publish each request with its id as the AMQP message_id
    (``wire.request``). With it the rejection is recorded, so ``status`` and a FileFailed
    say why; a row already under that id is never touched (``Rejecter._record``). Only the
    canonical 8-4-4-4-12 form counts: aio-pika makes up a 32-digit hex message_id for a
    message published without one, which names no request."""
    text = message_id or ""
    try:
        request_id = uuid.UUID(text)
    except ValueError:
        return None
    return request_id if str(request_id) == text.lower() else None


@dataclass(frozen=True, kw_only=True)
class Rejecter:
    db: store.Store
    channel: AbstractChannel
    topology: topology.Topology
    worker_id: str
    webhooks: settings.WebhookSettings  # the deployment's webhook (a request's own wins)

    @property
    def _effects(self) -> store.Effects:
        return functools.partial(outcomes.failed_effects, webhook_url=self.webhooks.url)

    async def reject(
        self,
        message: AbstractIncomingMessage,
        reason: states.Reason,
        error_class: str,
        error: str,
        request_id: uuid.UUID | None,
    ) -> None:
        """Dead-letter a delivery that can never be processed, with its reason; when it
        carries a usable id that is not taken yet, record a failed row (and so FileFailed and
        the failure email). Acked only once the dead letter is confirmed."""
        log.warning("rejecting message %s: %s: %s", message.message_id, reason, error)
        if request_id is not None:
            await self._record(request_id, message.body, reason, error_class, error)
        letter = wire.DeadLetter(reason=reason, error_class=error_class, error=error, attempts=0)
        await broker.publish_dead_letter(
            self.channel,
            self.topology,
            message.body,
            letter,
            worker_id=self.worker_id,
            message_id=message.message_id,
            routing_key=message.routing_key,
        )
        await message.ack()  # only after the dead letter is confirmed: raise if we cannot

    async def _record(
        self,
        request_id: uuid.UUID,
        body: bytes,
        reason: states.Reason,
        error_class: str,
        error: str,
    ) -> None:
        raw = events.storable_body(body)
        try:
            await self.db.requests.insert_invalid_request(
                request_id, raw, reason, error_class, error, effects=self._effects
            )
        except Exception as exc:
            if faults.is_infrastructure(exc):
                raise
            # Even the cleaned-up body was refused: keep the reason, drop the body.
            log.warning(
                "request %s: body not recordable (%s); recorded without it", request_id, exc
            )
            await self.db.requests.insert_invalid_request(
                request_id,
                {"body": "(not recordable)"},
                reason,
                error_class,
                wire.shorten(error.encode("ascii", "backslashreplace").decode(), wire.ERROR_LIMIT),
                effects=self._effects,
            )
