"""``python -m bench run [--quick]``: every benchmark, one invocation, a table and a JSON file."""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

from bench import common, large, latency, report, scaleout, sites, throughput

PACKAGES = (
    "bgworker",
    "aio-pika",
    "aiormq",
    "asyncpg",
    "aiohttp",
    "pydantic",
    "celery",
    "kombu",
    "psycopg",
)
BENCHMARKS = ("throughput", "latency", "large", "scaleout")


def _tool_version(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None:
        return "missing"
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "?"


def _mem_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal"):
            return int(line.split()[1])
    return 0


async def machine_facts() -> dict[str, Any]:
    mem = _mem_kib()
    conn = await asyncpg.connect(common.PG_ADMIN)
    try:
        pg = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    amqp = await common.amqp_connect("bench-facts")
    try:
        props = amqp.transport.connection.server_properties  # type: ignore[union-attr]
        rabbit = props.get("version", "?")
    finally:
        await amqp.close()
    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = "missing"
    return {
        "nproc": os.cpu_count(),
        "memory_gib": round(int(mem) / 1024**2, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "rabbitmq": rabbit,
        "postgresql": pg,
        "nginx": _tool_version(["nginx", "-v"]),
        "wrk": _tool_version(["wrk", "-v"]),
        "curl": _tool_version(["curl", "--version"]),
        "packages": packages,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    quick = args.quick
    n = args.requests or (200 if quick else 5000)
    reps = args.reps or (1 if quick else 3)
    only = set(args.only.split(",")) if args.only else set(BENCHMARKS)
    logdir = Path(tempfile.mkdtemp(prefix="bgw_bench_logs_"))
    common.log(f"child process logs in {logdir}")
    result: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "mode": "quick" if quick else "full",
        "machine": await machine_facts(),
    }
    async with common.bench_database() as dsn:
        with (
            common.storage_dir(common.TMPFS, "tmpfs") as shm,
            common.storage_dir(common.DISK, "disk") as disk,
        ):
            if "throughput" in only:
                storages = {"tmpfs": shm, "disk": disk}
                if args.storage:
                    storages = {args.storage: storages[args.storage]}
                result["throughput"] = await throughput.run(
                    dsn,
                    storages,
                    n,
                    reps,
                    logdir,
                    args.contenders,
                    args.baseline,
                    not args.no_count,
                )
            if "latency" in only:
                seconds = 3 if quick else 20
                runs = [
                    await common.retrying(
                        "latency",
                        functools.partial(latency.run, dsn, shm, args.rate, seconds, logdir),
                    )
                    for _ in range(reps)
                ]
                result["latency"] = latency.summarize(runs)
            if "large" in only:
                if not (shutil.which("nginx") and shutil.which("wrk")):
                    sys.exit(
                        "the download benchmark needs nginx and wrk: apt-get install nginx wrk"
                    )
                size = 64 * large.MIB if quick else large.GIB
                wrk_seconds = 1 if quick else 10
                result["large"] = await common.retrying(
                    "large files and downloads",
                    functools.partial(large.run, dsn, shm, size, reps, wrk_seconds, logdir),
                )
    if "scaleout" in only:
        # Its own database, bucket and hosts: after the others, none of theirs is open.
        why = sites.hosts_unavailable()
        if why:
            common.log(f"scaleout: skipped: {why}; `python -m bench.scaleout --loopback` runs it")
        else:
            counts = (1, 2) if quick else (1, 2, 4)
            jobs = 100 if quick else 600
            result["scaleout"] = await scaleout.run(counts, jobs, 8, False, logdir, reps)
    shutil.rmtree(logdir, ignore_errors=True)
    return result


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the benchmarks, print a table, write JSON")
    r.add_argument("--quick", action="store_true", help="every benchmark, briefly (smoke run)")
    r.add_argument("--requests", type=int, help="small-file requests per run (default 5000)")
    r.add_argument("--reps", type=int, help="repetitions of each figure (default 3)")
    r.add_argument("--rate", type=float, default=50.0, help="latency: offered req/s")
    r.add_argument("--only", help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    r.add_argument("--contenders", help="throughput: substring filter on contender names")
    r.add_argument("--storage", help="throughput: tmpfs or disk (default both)")
    r.add_argument(
        "--baseline",
        metavar="REV",
        help="throughput: also run this commit's worker (own cached venv) as bgworker@REV",
    )
    r.add_argument(
        "--no-count",
        action="store_true",
        help="throughput: skip the counting trials (round trips per job, bench.trips)",
    )
    r.add_argument("--out", type=Path, help="JSON path (default bench/results/<time>.json)")
    t = sub.add_parser("table", help="print the table of a results JSON file")
    t.add_argument("path", type=Path)
    args = p.parse_args()
    if args.command == "table":
        print(report.table(report.load(args.path)))
        return
    result = asyncio.run(run(args))
    out = args.out or common.REPO / "bench" / "results" / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    common.dump(out, result)
    print(report.table(result))
    print(f"\nresults: {out}")


if __name__ == "__main__":
    main()
