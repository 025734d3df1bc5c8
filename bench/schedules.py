"""``python -m bench.schedules [--counts 100,1000]``: what publishing schedules costs a
worker. Printed, never asserted.

For each count N: N schedules are created and made due at once (as after an outage), then
one worker's side-task rounds (``worker.schedules.Publisher.round``: claim with leases, one
firing transaction per schedule, publish with confirms; at most ``BATCH`` new schedules a
round) are timed until every period is out; then a round with nothing due (the steady
state: renew and claim only). Real PostgreSQL and RabbitMQ; a
database and a namespace of its own, removed afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from datetime import UTC, datetime

from bench import common
from bgworker import store
from bgworker.contract import schedules as contract
from bgworker.messaging import broker, topology
from bgworker.worker import schedules


async def _one(dsn: str, n: int) -> tuple[float, float, int]:
    topo = topology.Topology(f"bench-sched-{uuid.uuid4().hex[:8]}")
    connection = await common.amqp_connect("bench-schedules")
    channel = await broker.open_channel(connection)
    await topo.declare(channel)
    pool = await store.create_pool(dsn, max_size=4)
    try:
        db = store.Store(pool)
        now = datetime.now(UTC)
        for _ in range(n):
            request = contract.ScheduleRequested.model_validate(
                {
                    "id": str(uuid.uuid4()),
                    "cron": "0 8 * * 1",
                    "request": {"file_type": "blob", "requester": {"timezone": "Europe/Paris"}},
                }
            )
            await db.schedules.create(request, now)
        await pool.execute("UPDATE bgworker_schedules SET next_run_at = now() - interval '1 h'")
        publisher = schedules.Publisher(
            db=db,
            channel=channel,
            topology=topo,
            worker_id="bench",
            lease_seconds=60,
            interval_seconds=10,
        )
        # A round takes at most schedules.BATCH new schedules: rounds until all are out.
        start = time.perf_counter()
        published = rounds = 0
        while published < n:
            published += await publisher.round()
            rounds += 1
        due_round = time.perf_counter() - start
        start = time.perf_counter()
        await publisher.round()
        idle_round = time.perf_counter() - start
        return due_round, idle_round, rounds
    finally:
        await pool.close()
        await topo.delete(channel)
        await connection.close()


async def main(counts: list[int]) -> None:
    print(f"{'schedules':>10} {'rounds':>7} {'all due, s':>11} {'ms/period':>10} {'idle ms':>8}")
    for n in counts:
        async with common.bench_database() as dsn:
            due, idle, rounds = await _one(dsn, n)
        print(f"{n:>10} {rounds:>7} {due:>11.3f} {due / n * 1000:>10.2f} {idle * 1000:>8.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", default="100,1000", help="comma-separated (default 100,1000)")
    args = parser.parse_args()
    asyncio.run(main([int(c) for c in args.counts.split(",")]))
