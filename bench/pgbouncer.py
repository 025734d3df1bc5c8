"""``python -m bench.pgbouncer [--requests N] [--reps R]``: the small-file throughput of
bgworker's worker with PostgreSQL reached directly and through PgBouncer in transaction
mode (Debian's 1.18, started here on a free port with deploy/pgbouncer/pgbouncer.ini's
settings and a server pool of 10: tests/pgbouncer.py). Printed, never asserted.

Three ways per concurrency: direct (asyncpg's statement cache on, the default), direct
with the cache off (BGWORKER_DATABASE_POOLER=transaction against PostgreSQL itself: what
the setting costs alone), and through PgBouncer with the setting (what PgBouncer adds on
top). Each trial is bench.throughput's: fresh worker processes, N requests published at
once, first publish to last ``ready`` row; the worker's CPU per job, and PgBouncer's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any, Final

from bench import common, throughput
from tests import pgbouncer

CONCURRENCIES: Final = (4, 16)


async def main(n: int, reps: int) -> dict[str, Any]:
    if pgbouncer.BINARY is None:
        sys.exit(pgbouncer.MISSING)
    await common.wait_for_services()
    logdir = Path(tempfile.mkdtemp(prefix="bgw_bench_pgbouncer_"))
    storage = logdir / "files"
    storage.mkdir()
    results: dict[str, dict[str, common.Series]] = {}
    with pgbouncer.running(server=common.PG_ADMIN, pool_size=10) as bouncer:
        async with common.bench_database() as dsn:
            setup = throughput.Setup(dsn, f"bgw_bench_{uuid.uuid4().hex[:8]}", logdir)
            ways = {
                "direct": {},
                "direct, cache off": {"BGWORKER_DATABASE_POOLER": "transaction"},
                "pgbouncer": {
                    "BGWORKER_DATABASE_URL": bouncer.url(dsn),
                    "BGWORKER_DATABASE_POOLER": "transaction",
                },
            }
            try:
                for rep in range(reps):
                    for concurrency in CONCURRENCIES:
                        # Interleaved: each way sees the same stretch of machine noise.
                        for way, extra in ways.items():
                            name = f"{way} -c{concurrency}"
                            contender = throughput.Contender(
                                name, "bgworker", concurrency=concurrency
                            )
                            before = common.cpu_seconds([bouncer.pid])
                            got = await throughput.trial(
                                contender, setup, storage, n, f"pgb-r{rep}-c{concurrency}", extra
                            )
                            bouncer_ms = (common.cpu_seconds([bouncer.pid]) - before) * 1000 / n
                            got["pgbouncer_cpu_ms_per_job"] = bouncer_ms
                            for key, value in got.items():
                                results.setdefault(name, {}).setdefault(key, common.Series()).add(
                                    value
                                )
                            common.log(
                                f"{name:24} rep {rep + 1}/{reps}: {got['msg_per_s']:7.0f} jobs/s"
                                f"  worker {got['worker_cpu_ms_per_job']:.2f} ms CPU/job"
                                f"  pgbouncer {bouncer_ms:.2f} ms CPU/job"
                            )
            finally:
                await throughput.cleanup(setup)
    common.log(f"logs in {logdir}")
    out = {name: {k: s.to_json() for k, s in m.items()} for name, m in results.items()}
    print(table(out))
    return {"requests": n, "repetitions": reps, "contenders": out}


def table(contenders: dict[str, dict[str, Any]]) -> str:
    """Medians as a Markdown table (docs/operating.md, PgBouncer)."""
    columns = {
        "jobs/s": ("msg_per_s", "{:.0f}"),
        "worker CPU ms/job": ("worker_cpu_ms_per_job", "{:.2f}"),
        "PostgreSQL CPU ms/job": ("pg_cpu_ms_per_job", "{:.2f}"),
        "PgBouncer CPU ms/job": ("pgbouncer_cpu_ms_per_job", "{:.2f}"),
    }
    lines = [
        "| | " + " | ".join(columns) + " |",
        "| --- |" + " ---: |" * len(columns),
    ]
    for name, m in contenders.items():
        cells = [fmt.format(m[key]["median"]) for key, fmt in columns.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cli() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pgbouncer", description=__doc__)
    parser.add_argument("--requests", type=int, default=1000, help="jobs per trial")
    parser.add_argument("--reps", type=int, default=3, help="trials of each contender")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--table", type=Path, help="print the table of such a JSON file")
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(args.table.read_text())["contenders"]))
        return 0
    results = asyncio.run(main(args.requests, args.reps))
    if args.json:
        common.dump(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
