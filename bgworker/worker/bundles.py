"""A ``BundleRequested`` delivery: the bundle and its parts recorded, the parts published.

It takes a job slot for one transaction, not for a build: the parts are requests, published
to the work queue inside the transaction that records them (confirmed before it commits),
and each is claimed, built, retried and dead-lettered by whichever worker takes it. A
redelivered bundle whose transaction committed is a duplicate (acked, nothing published);
one that did not is done again, under the same part ids.
"""

from __future__ import annotations

import logging

from aio_pika.abc import AbstractIncomingMessage

from bgworker.contract import bundles, events, states
from bgworker.messaging import broker
from bgworker.store import requests as request_rows
from bgworker.worker import jobs

log = logging.getLogger(__name__)


async def intake(message: AbstractIncomingMessage, runner: jobs.Runner) -> states.JobOutcome:
    """Record and publish, then ack. An invalid bundle, or one naming a file type no handler
    here builds, is dead-lettered with its reason and records nothing: none of it runs."""
    try:
        bundle = bundles.parse_bundle_requested(message.body)
    except events.InvalidEventError as exc:
        await runner.rejecter.reject(
            message, states.Reason(exc.reason), "InvalidEventError", str(exc), None
        )
        return states.JobOutcome.INVALID
    unknown = sorted(
        {p.file_type for p in bundle.parts if runner.registry.find(p.file_type) is None}
    )
    if unknown:
        error = (
            f"no handler for file_type {', '.join(map(repr, unknown))} "
            f"(registered: {', '.join(runner.registry.file_types) or 'none'})"
        )
        await runner.rejecter.reject(
            message, states.Reason.UNKNOWN_FILE_TYPE, "UnknownFileTypeError", error, None
        )
        return states.JobOutcome.INVALID
    parts = bundle.part_events()
    columns = []
    for index, part in enumerate(parts):
        max_attempts, names = runner.claim_args(part)
        row = request_rows.request_columns(part, max_attempts, names)
        columns.append({**row, "bundle_id": bundle.id, "bundle_index": index})
    requester = bundle.requester

    async def publish() -> None:
        for part in parts:
            await broker.publish_request(runner.channel, runner.topology, part)

    recorded = await runner.db.bundles.record(
        {
            "id": bundle.id,
            "event": bundle.model_dump(mode="json"),
            "requester_id": requester.id if requester else None,
            "requester_email": requester.email if requester else None,
            "tenant": events.tenant_of(parts[0]),
            "parts": len(parts),
        },
        columns,
        publish,
    )
    await message.ack()
    if not recorded:
        log.info("bundle %s: a duplicate delivery, already recorded", bundle.id)
        return states.JobOutcome.DUPLICATE
    log.info("bundle %s: recorded, %d parts published", bundle.id, len(parts))
    return states.JobOutcome.BUNDLED
