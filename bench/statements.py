"""``python -m bench.statements [--jobs N]``: PostgreSQL CPU per statement of a job.

Runs what a worker runs for each small-file job that finishes alone, N times on one
connection of a fresh bench database: the claim (``record_and_claim``), the ready
transaction (``mark_ready`` and ``insert_outbox`` for one ``FileReady`` effect) and
``outbox_done``; then the floor's three statements for comparison. Printed per statement:
the backend's CPU (utime + stime from ``/proc/<pid>/stat``, so only on the same machine as
PostgreSQL) and wall time per execution, and how PostgreSQL planned each prepared statement
(``pg_prepared_statements``: generic plans are made once; a statement that gets a custom
plan every time is planned on every execution, which can cost more than running it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

from bench import common, workload
from bgworker.contract import events
from bgworker.store import connection, queries
from bgworker.store.requests import request_columns

TICK: Final = os.sysconf("SC_CLK_TCK")
NAMED: Final = queries.NAMED
PLANS: Final = (
    "SELECT generic_plans, custom_plans, left(regexp_replace(statement, '\\s+', ' ', 'g'), 70)"
    " AS statement FROM pg_prepared_statements WHERE generic_plans + custom_plans > 10"
)


def backend_cpu(pid: int) -> float:
    """Seconds of CPU the backend process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


async def measure(dsn: str, jobs: int) -> list[tuple[str, float, float]]:
    # bgworker's own pool (JSON codecs, no reset), one connection: one backend to watch.
    pool = await connection.create_pool(dsn, min_size=1, max_size=1)
    try:
        conn = await pool.acquire()
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        evs = [
            events.FileRequested(
                id=uuid.uuid4(),
                file_type="bench_csv",
                criteria={"seed": i},
                filename=f"bench-{i}.csv",
                content_type="text/csv",
            )
            for i in range(jobs)
        ]
        claims: list[Any] = [None] * jobs
        figures: list[tuple[str, float, float]] = []

        async def phase(name: str, step: Callable[[int], Awaitable[None]]) -> None:
            cpu, wall = backend_cpu(pid), time.perf_counter()
            for i in range(jobs):
                await step(i)
            figures.append(
                (
                    name,
                    (backend_cpu(pid) - cpu) / jobs * 1000,
                    (time.perf_counter() - wall) / jobs * 1000,
                )
            )

        async def claim(i: int) -> None:
            claims[i] = await conn.fetchrow(
                *queries.bind(
                    "record_and_claim",
                    **request_columns(evs[i], 3),
                    worker="bench",
                    lease_seconds=60.0,
                    requested_at_set=False,
                )
            )

        async def ready(i: int) -> None:
            c, mark = claims[i], NAMED["mark_ready"]
            args = mark.args(
                request_id=c["id"],
                lease_token=c["lease_token"],
                size=workload.CSV_SIZE,
                sha256="0" * 64,
                storage_key=workload.key_for(c["id"]),
                attempt=c["attempts"],
                done=None,
                total=None,
            )
            effect = (c["id"], "event_ready", {"type": "FileReady", "id": str(c["id"])}, 30.0)
            async with conn.transaction():
                await conn.fetchmany(mark.sql, [args])
                await conn.fetchmany(queries.QUERIES["insert_outbox"], [effect])

        async def done(i: int) -> None:
            await conn.executemany(
                queries.QUERIES["outbox_done"], [(claims[i]["id"], "event_ready")]
            )

        async def floor(i: int) -> None:
            rid = evs[i].id
            await conn.execute(workload.INSERT_QUEUED, rid)
            await conn.execute(workload.MARK_RUNNING, rid)
            await conn.execute(workload.MARK_READY, rid, 10, "0" * 64, "x")

        await phase("record_and_claim", claim)
        await phase("BEGIN; mark_ready; insert_outbox; COMMIT", ready)
        await phase("outbox_done", done)
        await phase("floor: insert, running, ready (3 commits)", floor)
        for p in await conn.fetch(PLANS):
            plans = f"{p['generic_plans']} generic, {p['custom_plans']} custom"
            figures.append((f"plans: {plans}: {p['statement']}", 0.0, 0.0))
        await pool.release(conn)
        return figures
    finally:
        await pool.close()


async def main(jobs: int) -> None:
    async with common.bench_database() as dsn:
        for name, cpu, wall in await measure(dsn, jobs):
            if name.startswith("plans:"):
                print(name)
            else:
                print(f"{name:45s} backend CPU {cpu:6.3f} ms  wall {wall:6.3f} ms  per job")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=2000)
    asyncio.run(main(parser.parse_args().jobs))
