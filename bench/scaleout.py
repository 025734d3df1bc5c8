"""Scale-out: bgworker workers on 1, 2 and 4 hosts, S3 storage on SeaweedFS, each part's
CPU per job and which part saturates.

``python -m bench.scaleout [--hosts 1,2,4] [--requests N] [--loopback]`` (also ``python -m
bench run --only scaleout``). A host is one worker process; ``bench.sites`` says where the
parts run: on namespace hosts against a 3-node RabbitMQ cluster (root, and the hosts
tooling), or all on loopback against the machine's broker (anyone; the broker's CPU then
includes other users' traffic). PostgreSQL is the machine's (the workers' database is a
fresh one); SeaweedFS is one ``weed server`` (``tests.s3.seaweedfs_command``), on tmpfs on
loopback, on its own host's disk with namespace hosts.

Each run: fresh worker processes, a warm-up batch (connections, pools, the S3 client),
then ``N`` ``bench_csv`` jobs (10 KiB CSV, one PutObject each) published as fast as the
broker confirms them; from the first publish to the last ``ready`` row. CPU per part is
read from /proc before and after the ``N`` jobs (``bench.cpu``); ``bench.capacity`` turns
the per-job costs into jobs/s per core and checks its prediction against each run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aio_pika
import asyncpg

from bench import capacity, common, cpu, sites
from bgworker.contract import events
from bgworker.messaging import topology, wire
from tests import s3

HARNESS: Final = ("bench", "proxy")  # would not run in production: left out of the model
READY_SQL: Final = (
    "SELECT count(*) FILTER (WHERE status = 'ready'), count(*) FILTER (WHERE status = "
    "'failed'), extract(epoch FROM max(finished_at)) FROM bgworker_requests"
)


@dataclass(frozen=True)
class Bench:
    """What every run shares."""

    site: sites.Site
    dsn: str
    topo: topology.Topology
    s3_env: dict[str, str]
    requests: int
    concurrency: int
    logdir: Path


def worker_env(b: Bench, host: int) -> dict[str, str]:
    return common.child_env(
        {
            "BGWORKER_AMQP_URL": b.site.worker_amqp_url(host),
            "BGWORKER_DATABASE_URL": b.site.worker_dsn(b.dsn),
            "BGWORKER_NAMESPACE": b.topo.namespace,
            "BGWORKER_STORAGE_DIR": "/nonexistent",  # S3 only: no local file is written
            "BGWORKER_HANDLERS": "bench.handlers:registry",
            "BGWORKER_TOKENS__SECRET_KEYS": "scaleout-bench-not-a-secret-key-0123456789",
            "BGWORKER_LOG_LEVEL": "WARNING",
            "BGWORKER_WORKER__CONCURRENCY": str(b.concurrency),
            **b.s3_env,
        }
    )


async def _backends(admin: asyncpg.Connection, database: str, exclude: int) -> list[int]:
    """The PostgreSQL backends serving the workers (the bench's own poller excluded)."""
    rows = await admin.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> $2", database, exclude
    )
    return [r["pid"] for r in rows]


def _message(seed: int) -> aio_pika.Message:
    """The throughput benchmark's job (bench.throughput), as a producer sends it."""
    event = events.FileRequested(
        id=uuid.uuid4(),
        file_type="bench_csv",
        criteria={"seed": seed},
        filename=f"bench-{seed}.csv",
        content_type="text/csv",
    )
    return wire.request(event.model_dump(mode="json", exclude_none=True), str(event.id))


async def _publish(url: str, topo: topology.Topology, seeds: range) -> None:
    connection = await aio_pika.connect(url, client_properties={"connection_name": "bench-pub"})
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        messages = [_message(seed) for seed in seeds]
        await common.publish_all(channel, topo.requests_exchange, topology.REQUESTED_KEY, messages)
    finally:
        await connection.close()


async def _wait_consumers(
    url: str, queue: str, n: int, children: list[common.Child], timeout: float = 120
) -> None:
    """Until ``n`` consumers are on ``queue``; a worker that exits meanwhile says why."""
    connection = await aio_pika.connect(url)
    try:
        deadline = time.monotonic() + timeout
        while True:
            channel = await connection.channel()
            try:
                if await common.consumer_count(channel, queue) >= n:
                    return
            finally:
                with contextlib.suppress(Exception):
                    await channel.close()
            for child in children:
                child.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"fewer than {n} workers consume {queue}")
            await asyncio.sleep(0.2)
    finally:
        await connection.close()


async def _wait_ready(db: asyncpg.Connection, total: int, children: list[common.Child]) -> float:
    """Until ``total`` rows are ready; the epoch of the last one's ``finished_at``."""
    deadline = time.monotonic() + 120 + total / 5
    while True:
        ready, failed, last = await db.fetchrow(READY_SQL)
        if failed:
            raise RuntimeError(f"{failed} requests failed (see the worker logs)")
        if ready >= total:
            return float(last)
        for child in children:
            child.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{ready}/{total} ready after the deadline")
        await asyncio.sleep(0.05)


async def trial(b: Bench, hosts: int) -> dict[str, Any]:
    """``hosts`` fresh workers, a warm-up batch, then ``b.requests`` jobs measured."""
    site, n = b.site, b.requests
    await common.reset_tables(b.dsn)
    argv = [sys.executable, "-m", "bgworker", "worker"]
    children = [
        site.spawn(i, f"scaleout-h{hosts}-worker{i}", argv, worker_env(b, i), b.logdir)
        for i in range(hosts)
    ]
    db = await asyncpg.connect(b.dsn)
    admin = await asyncpg.connect(common.PG_ADMIN)
    try:
        await _wait_consumers(site.bench_amqp_url, b.topo.work_queue, hosts, children)
        warm = hosts * b.concurrency * 2
        await _publish(site.bench_amqp_url, b.topo, range(warm))
        await _wait_ready(db, warm, children)

        async def parts() -> dict[str, list[int]]:
            return {
                "workers": [c.pid for c in children],
                "broker": site.broker_pids(),
                "postgres": await _backends(admin, b.dsn.rsplit("/", 1)[1], db.get_server_pid()),
                "s3": [site.s3.server.pid],
                "proxy": site.harness_pids(),
                "bench": [os.getpid()],
            }

        before = cpu.snapshot(await parts(), alone=["bench"])
        t0 = time.time()
        await _publish(site.bench_amqp_url, b.topo, range(warm, warm + n))
        last = await _wait_ready(db, warm + n, children)
        after = cpu.snapshot(await parts(), alone=["bench"])
    finally:
        await db.close()
        await admin.close()
        for child in children:
            await child.stop()
    used = cpu.usage(before, after)
    return {
        "hosts": hosts,
        "requests": n,
        "concurrency": b.concurrency,
        "seconds": last - t0,
        "jobs_per_s": n / (last - t0),
        "cpu_ms_per_job": used.ms_per_job(n),
        "cores": {part: used.cores(part) for part in used.cpu},
        "worker_process_cores": [v / used.seconds for v in used.per_root["workers"]],
        "broker_node_cores": [v / used.seconds for v in used.per_root["broker"]],
        "machine_cores": used.machine_cores,
        "other_cores": used.other_cores,
        "nproc": used.nproc,
        "bottleneck": cpu.bottleneck(used, HARNESS),
    }


async def _s3_env(site: sites.Site) -> dict[str, str]:
    bucket = await s3.new_bucket(site.s3.server)
    return {
        "BGWORKER_STORAGE__BACKEND": "s3",
        "BGWORKER_STORAGE__S3_BUCKET": bucket,
        "BGWORKER_STORAGE__S3_ENDPOINT_URL": site.s3.worker_url,
        "BGWORKER_STORAGE__S3_ACCESS_KEY_ID": s3.ACCESS_KEY,
        "BGWORKER_STORAGE__S3_SECRET_ACCESS_KEY": s3.SECRET_KEY,
    }


async def run(
    counts: Sequence[int], n: int, conc: int, loopback: bool, logdir: Path, reps: int = 1
) -> dict[str, Any]:
    """``reps`` rounds over ``counts`` (interleaved: each count sees the same stretch of a
    shared machine's noise), medians per count."""
    await common.wait_for_services()
    result: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    async with sites.open_site(max(counts), loopback) as site:
        result["site"] = site.describe()
        common.log(f"scale-out on {site.describe()}")
        s3_env = await _s3_env(site)
        async with common.bench_database() as dsn:
            topo = topology.Topology(f"bgw_bench_so_{uuid.uuid4().hex[:8]}")
            b = Bench(site, dsn, topo, s3_env, n, conc, logdir)
            connection = await aio_pika.connect(site.bench_amqp_url)
            try:
                await topo.declare(await connection.channel())
                # Which node leads the work queue: the busiest node's share is read with it.
                names = await asyncio.to_thread(site.broker_nodes, topo.work_queue)
                result["broker_nodes"] = names
                runs = []
                for rep in range(reps):
                    for hosts in counts:
                        got = await trial(b, hosts)
                        runs.append(got)
                        ms = got["cpu_ms_per_job"]
                        common.log(
                            f"scale-out {rep + 1}/{reps} {hosts} host(s): "
                            f"{got['jobs_per_s']:.0f} jobs/s, CPU ms/job "
                            + ", ".join(f"{k} {v:.2f}" for k, v in ms.items())
                            + f"; saturates: {got['bottleneck']}"
                        )
            finally:
                with contextlib.suppress(Exception):
                    await topo.delete(await connection.channel())
                await connection.close()
    result["runs"] = runs
    result["reps"] = reps
    result["medians"] = capacity.medians(runs)
    result["model"] = capacity.model(result["medians"], HARNESS)
    return result


def cli() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaleout", description=__doc__)
    parser.add_argument("--hosts", default="1,2,4", help="worker host counts, in order")
    parser.add_argument("--requests", type=int, default=600, help="jobs per run")
    parser.add_argument("--concurrency", type=int, default=8, help="jobs at once per worker")
    parser.add_argument("--reps", type=int, default=1, help="rounds over the host counts")
    parser.add_argument(
        "--loopback", action="store_true", help="every part on loopback (no namespaces)"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    logdir = Path(tempfile.mkdtemp(prefix="bgw_bench_scaleout_"))
    counts = [int(x) for x in args.hosts.split(",")]
    result = asyncio.run(
        run(counts, args.requests, args.concurrency, args.loopback, logdir, args.reps)
    )
    print(capacity.table(result))
    if args.json:
        common.dump(args.json, result)
    common.log(f"logs in {logdir}")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
