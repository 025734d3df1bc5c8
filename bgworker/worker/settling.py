"""A delivery, from the moment the intake admits it until it is settled (acked, nacked or
dead-lettered).

Before its claim commits, a delivery is still the broker's: an infrastructure failure then
(PostgreSQL away) keeps it in hand and retries here with backoff, since handing it back at
once would spin it through the queue, and a quorum queue dead-letters a message after 20
deliveries. Any other failure before the ack is the message's own: it would fail the same
way on every delivery, so it is dead-lettered at once. After the ack the request's row
holds it: the lease expires and the reaper requeues it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

from aio_pika.abc import AbstractIncomingMessage

from bgworker import faults
from bgworker.contract import states
from bgworker.messaging import topology
from bgworker.observe import logs
from bgworker.worker import bundles, jobs

log = logging.getLogger(__name__)

INFRA_BACKOFF_SECONDS: Final = 1.0
INFRA_BACKOFF_MAX_SECONDS: Final = 10.0


async def handle_until_settled(
    message: AbstractIncomingMessage,
    runner: jobs.Runner,
    *,
    hold_seconds: float,
    stopping: asyncio.Event,
) -> states.JobOutcome:
    """Run the delivery; hold it through an infrastructure failure before its ack for up to
    ``hold_seconds`` (or until ``stopping``), then give it back to the queue."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + hold_seconds
    delay = INFRA_BACKOFF_SECONDS
    while True:
        try:
            if message.routing_key == topology.BUNDLE_KEY:
                return await bundles.intake(message, runner)
            return await runner.handle(message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if message.processed:
                # Acked after the claim: the lease expires and the reaper requeues it.
                # A lost connection is expected (one line, no traceback); anything else is
                # a bug in bgworker, with its traceback.
                if faults.report(exc, f"request {message.message_id}"):
                    log.warning(
                        "request %s: its outcome could not be recorded (%s); the reaper "
                        "will requeue it when the lease expires",
                        message.message_id,
                        logs.describe(exc),
                    )
                else:
                    log.exception(
                        "request %s: failed after its claim; the reaper will requeue "
                        "it when the lease expires",
                        message.message_id,
                    )
                return states.JobOutcome.ERROR
            if not faults.is_infrastructure(exc):
                return await reject_unprocessable(message, runner, exc)
            if stopping.is_set() or loop.time() + delay > give_up:
                log.warning(
                    "delivery %s: giving it back to the queue: %s",
                    message.message_id,
                    logs.describe(exc),
                )
                with contextlib.suppress(Exception):
                    await message.nack(requeue=True)
                return states.JobOutcome.ERROR
            # Held through a service's outage: said once (faults.report), then each retry
            # quietly; anything else at WARNING.
            log.log(
                faults.level(exc, f"delivery {message.message_id}"),
                "delivery %s: %s; retrying in %.1fs",
                message.message_id,
                logs.describe(exc),
                delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, INFRA_BACKOFF_MAX_SECONDS)


async def reject_unprocessable(
    message: AbstractIncomingMessage, runner: jobs.Runner, exc: Exception
) -> states.JobOutcome:
    """Last line of defence: an error ``Runner.handle`` did not classify, raised before the
    ack. Holding it would loop on the same poison; dead-letter it instead."""
    log.error(
        "delivery %s: unexpected %s before its claim; dead-lettering it",
        message.message_id,
        type(exc).__name__,
        exc_info=exc,
    )
    try:
        await runner.rejecter.reject(
            message,
            states.Reason.UNPROCESSABLE,
            type(exc).__name__,
            str(exc) or repr(exc),
            None,
        )
    except Exception as again:  # the broker is away: hand it back, it comes again
        log.warning(
            "delivery %s: could not dead-letter it: %s", message.message_id, logs.describe(again)
        )
        with contextlib.suppress(Exception):
            await message.nack(requeue=True)
        return states.JobOutcome.ERROR
    return states.JobOutcome.UNPROCESSABLE
