"""``python -m bench.retention_issue23 [--counts 10000,100000]``: what ``bgworker clean``'s
pruning of issue 23's tables costs as they grow. Printed, never asserted.

For each count N: N schedule periods (over N / 100 active schedules, 100 periods each, half
of them published 100 days ago) and N / 10 bundles with no part left (half ended 100 days
ago) are written straight into a database of its own; then the ``schedule_runs`` and
``bundles`` stages run batch after batch of 500 as ``ops.retention.prune`` runs them, and
the time of each stage and per batch is printed. Neither table has an index on its end time
(that needs a migration), so each batch reads the whole table: the per-batch time grows
with N.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from bench import common
from bgworker import store
from bgworker.contract import retention
from bgworker.store import retention as store_retention

BATCH = 500
FILL = """
WITH s AS (
    INSERT INTO bgworker_schedules (id, cron, timezone, template, file_type, next_run_at,
        last_period)
    SELECT gen_random_uuid(), '0 8 * * 1', 'Europe/Paris', '{}', 'blob',
           now() + interval '1 day', now()
    FROM generate_series(1, $1::integer / 100)
    RETURNING id
)
INSERT INTO bgworker_schedule_runs (schedule_id, period, request_id, event, published_at)
SELECT s.id, now() - make_interval(days => p), gen_random_uuid(), '{"id": "x"}',
       now() - make_interval(days => CASE WHEN p % 2 = 0 THEN 100 ELSE 1 END)
FROM s, generate_series(1, 100) p;
"""
FILL_BUNDLES = """
INSERT INTO bgworker_bundles (id, event, parts, created_at, finished_at)
SELECT gen_random_uuid(), '{}', 3, ended, ended
FROM (SELECT now() - make_interval(days => CASE WHEN i % 2 = 0 THEN 100 ELSE 1 END) AS ended
      FROM generate_series(1, $1::integer / 10) i) x;
"""


async def _stage(db: store.Store, stage: str) -> tuple[int, int, float]:
    """One stage alone, batch after batch as ``ops.retention.prune`` runs it: (pruned,
    batches, seconds)."""
    keep = retention.RetentionSettings().seconds("rows")
    after, pruned, batches = store_retention.START, 0, 0
    start = time.perf_counter()
    while True:
        batch = await db.retention.prune(stage, keep, BATCH, after)
        pruned, batches = pruned + batch.pruned, batches + 1
        after = batch.after or after
        if batch.scanned < BATCH:
            return pruned, batches, time.perf_counter() - start


async def _one(dsn: str, n: int) -> list[tuple[str, int, int, int, float]]:
    pool = await store.create_pool(dsn, max_size=2)
    try:
        await pool.execute(FILL, n)
        await pool.execute(FILL_BUNDLES, n)
        await pool.execute("ANALYZE")
        db = store.Store(pool)
        out = []
        for stage, rows in (("schedule_runs", n), ("bundles", n // 10)):
            out.append((stage, rows, *await _stage(db, stage)))
        return out
    finally:
        await pool.close()


async def main(counts: list[int]) -> None:
    print(f"{'stage':>14} {'rows':>8} {'pruned':>8} {'batches':>8} {'total s':>8} {'ms/batch':>9}")
    for n in counts:
        async with common.bench_database() as dsn:
            for stage, rows, pruned, batches, seconds in await _one(dsn, n):
                ms = seconds * 1000 / batches
                print(f"{stage:>14} {rows:>8} {pruned:>8} {batches:>8} {seconds:>8.2f} {ms:>9.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--counts", default="10000,100000", help="comma-separated")
    args = parser.parse_args()
    asyncio.run(main([int(c) for c in args.counts.split(",")]))
