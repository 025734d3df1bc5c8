"""Dedupe by content: a file type registered with ``dedupe_seconds`` builds a file once for
identical requests (same file type, criteria and requester).

After its claim, such a request takes one step at a time (``store.dedupe_step``, under an
advisory lock on its fingerprint):

- a ready file of the fingerprint built within the window: the request ends ready on the
  same bytes, with its own link, email and ``FileReady``, and ``reused_from`` on its row;
- an identical request being built (running under a live lease): wait, holding the claim
  (the worker keeps its lease), and look again;
- neither: this request builds, and carries the fingerprint so later ones wait for it.

When the one building fails, is cancelled, or waits for a retry, a waiter's next look
finds nothing to wait for and builds itself (a retry waited for could starve: the waiters
hold the worker slots it needs); when its worker dies, its lease expires and the same
happens. Only a row that builds carries the fingerprint, so a wait never waits on a wait. A
waiter killed while waiting is an ordinary expired lease: the reaper requeues it and it
decides again. No decision is held in memory, so none is lost with a process.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from typing import Final

from bgworker import store
from bgworker.contract import events, states
from bgworker.observe import metrics
from bgworker.worker import finalize

log = logging.getLogger(__name__)

# How often a waiter looks whether the identical request it waits for has ended: one
# short transaction per look per waiter.
POLL_SECONDS: Final = 0.5


def fingerprint(event: events.FileRequested) -> str:
    """sha256 of the canonical JSON of (file type, criteria, requester): keys sorted, no
    spaces, UTF-8. Language and timezone are part of the requester, since they change the
    file; the filename, description and lifetime are not, since they do not."""
    requester = event.requester.model_dump(mode="json") if event.requester else None
    canonical = json.dumps(
        {"file_type": event.file_type, "criteria": event.criteria, "requester": requester},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


async def settle(
    db: store.Store,
    finalizer: finalize.Finalizer,
    claim: store.Claim,
    event: events.FileRequested,
    window_seconds: float,
) -> states.JobOutcome | None:
    """Reuse or wait; None when this request must build its file. Runs while the worker's
    lease keeper renews the claim's lease; a cancel or a lost lease cancels it like a handler."""
    key = fingerprint(event)
    waited_for = None
    while True:
        # The same effects as a built file: email, FileReady and the webhook, if any.
        decision = await db.dedupe.dedupe_step(claim, key, window_seconds, finalizer.ready_effects)
        if decision.step is store.DedupeStep.LEAD:
            if waited_for is not None:
                log.info("request %s: %s ended without a file; building", event.id, waited_for)
            return None
        if decision.step is store.DedupeStep.LOST:
            return await finalizer.cancelled_or_lost(claim)
        if decision.step is store.DedupeStep.REUSED:
            assert decision.row is not None
            metrics.REUSED.labels(event.file_type).inc()
            log.info(
                "request %s: ready, reusing the file of %s", event.id, decision.row.reused_from
            )
            return states.JobOutcome.READY
        if decision.builder != waited_for:
            log.info("request %s: waiting for identical %s", event.id, decision.builder)
            waited_for = decision.builder
        await asyncio.sleep(POLL_SECONDS)
