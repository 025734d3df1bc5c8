"""``python -m bench.my_files_sections [--counts 10000,100000]``: what the my-files page's
bundles and schedules sections cost one page load as the tables grow. Printed, never
asserted.

For each count N: N schedules (a third ended) and N / 5 bundles of three parts each
(half of them live) are written straight into a database of its own, spread over 10,000
addresses; then one address's sections are read through ``Store.my_files`` (the page's own
calls), 20 times each, and the median printed beside the files list's for the same
address. The bundles are found through the requests' email index; the schedules table has
no index on the address (that needs a migration), so its read grows with the table.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench import common
from bgworker import store

ADDRESSES = 10_000
REPEAT = 20
FILL = """
INSERT INTO bgworker_schedules (id, cron, timezone, template, file_type, requester_email,
    next_run_at, status)
SELECT gen_random_uuid(), '0 8 * * 1', 'Europe/Paris',
       jsonb_build_object('description', 'weekly ' || i), 'blob',
       'u' || (i % $2) || '@x.org', now() + interval '1 day',
       CASE WHEN i % 3 = 0 THEN 'ended' ELSE 'active' END
FROM generate_series(1, $1::integer) i;
"""
FILL_BUNDLES = """
WITH made AS (
    INSERT INTO bgworker_bundles (id, event, requester_email, parts)
    SELECT gen_random_uuid(), jsonb_build_object('description', 'bundle ' || i),
           'u' || (i % $2) || '@x.org', 3
    FROM generate_series(1, $1::integer) i
    RETURNING id, requester_email
)
INSERT INTO bgworker_requests (id, file_type, status, event, filename, content_type,
    requested_at, requester_email, bundle_id, bundle_index, expires_at, finished_at)
SELECT gen_random_uuid(), 'blob',
       CASE WHEN random() < 0.5 THEN 'ready' ELSE 'expired' END, '{}', 'p.bin',
       'application/octet-stream', now(), made.requester_email, made.id, p,
       now() + interval '1 day', now()
FROM made, generate_series(0, 2) p;
"""


async def _median_ms(call: Callable[[], Awaitable[Any]]) -> float:
    samples = []
    for _ in range(REPEAT):
        start = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


async def _one(dsn: str, n: int) -> tuple[float, float, float]:
    pool = await store.create_pool(dsn, max_size=2)
    try:
        await pool.execute(FILL, n, ADDRESSES)
        await pool.execute(FILL_BUNDLES, n // 5, ADDRESSES)
        await pool.execute("ANALYZE")
        mine = store.Store(pool).my_files
        email = "u42@x.org"
        files = await _median_ms(lambda: mine.list_files(email, recent_seconds=3600, limit=101))
        bundles = await _median_ms(lambda: mine.list_bundles(email, limit=50))
        schedules = await _median_ms(lambda: mine.list_schedules(email, limit=50))
        return files, bundles, schedules
    finally:
        await pool.close()


async def main(counts: list[int]) -> None:
    print(f"{'schedules':>10} {'bundles':>8} {'files ms':>9} {'bundles ms':>11} {'sched. ms':>10}")
    for n in counts:
        async with common.bench_database() as dsn:
            files, bundles, schedules = await _one(dsn, n)
        print(f"{n:>10} {n // 5:>8} {files:>9.2f} {bundles:>11.2f} {schedules:>10.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", default="10000,100000", help="comma-separated")
    args = parser.parse_args()
    asyncio.run(main([int(c) for c in args.counts.split(",")]))
