"""Retention, the part of ``bgworker clean`` that prunes data by age
(``BGWORKER_RETENTION__*``, ``contract.retention``).

Each stage runs in batches (``store.retention``: one short transaction each, ``SKIP
LOCKED``, the next batch starting where the last stopped) until a batch comes back short
or the run's ``--timeout`` is reached, so workers are never locked out and a run that stops
early leaves only unpruned rows, never a half-pruned one. Then the dead letters older than
``dead_letters_days`` leave ``ns.dead``: a scan that acknowledges them, every younger letter
going back to its place. What was pruned is counted in ``bgworker_pruned_total{kind}``
(``clean --metrics-file`` writes it for node_exporter's textfile collector).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from bgworker import store
from bgworker.contract import retention
from bgworker.observe import metrics
from bgworker.ops.deadletters import queue
from bgworker.store import retention as store_retention

log = logging.getLogger(__name__)

# The setting that rules each stage (by default its own name).
_PERIOD = {
    "dead_letter_records": "dead_letters",
    "producer_outbox": "outbox",
    "bundle_addresses": "addresses",
    # A bundle outlives no part; a period's row is the link from its request to the
    # schedule (the request's email reads it) and a period's at-most-once key: kept as
    # long as the request rows, not the effects' payloads.
    "bundles": "rows",
    "schedule_runs": "rows",
    "schedules": "rows",
}


async def prune(
    db: store.Store,
    policy: retention.RetentionSettings,
    dlq: queue.DeadLetterQueue | None,
    *,
    dry_run: bool = False,
    out_of_time: Callable[[], bool] = lambda: False,
    pause_seconds: float = 0.0,
) -> dict[str, int]:
    """Prune every stage, then the dead letters; what was (or would be) pruned, by kind."""
    pruned: dict[str, int] = {}
    for stage in store_retention.STAGES:
        keep = policy.seconds(_PERIOD.get(stage, stage))
        after, total = store_retention.START, 0
        while not out_of_time():
            batch = await db.retention.prune(stage, keep, policy.batch_size, after, dry_run=dry_run)
            total += batch.pruned
            after = batch.after or after
            if batch.scanned < policy.batch_size:
                break
            if pause_seconds:  # spare the database between batches (clean --sleep)
                await asyncio.sleep(pause_seconds)
        pruned[stage] = total
    if dlq is not None and not out_of_time():
        cutoff = datetime.now(UTC) - timedelta(seconds=policy.seconds("dead_letters"))
        pruned["dead_letters"] = await _old_letters(dlq, cutoff, dry_run=dry_run)
    if not dry_run:
        for kind, n in pruned.items():
            metrics.PRUNED.labels(kind).inc(n)
    return pruned


async def _old_letters(dlq: queue.DeadLetterQueue, cutoff: datetime, *, dry_run: bool) -> int:
    """Remove the letters that last died before ``cutoff``; a letter that says nothing of
    when it died stays (``bgworker dlq purge`` can remove it)."""
    removed = 0
    async with contextlib.aclosing(dlq.scan()) as held:
        async for item in held:
            died = item.letter.last_death
            if died is not None and died < cutoff:
                if not dry_run:
                    await item.ack()
                removed += 1
    return removed
