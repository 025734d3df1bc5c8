"""Benchmark 1: small-file throughput, first publish -> last ``ready`` row, per contender."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import secrets
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aio_pika
import asyncpg
from aio_pika.abc import DeliveryMode

from bench import baseline, celery_app, common, services, trips
from bgworker.contract import events
from bgworker.messaging import topology, wire

READY_SQL: Final = {
    "bgworker_requests": "SELECT count(*) FILTER (WHERE status = 'ready'), "
    "extract(epoch FROM max(finished_at)) FROM bgworker_requests",
    "bench_jobs": "SELECT count(*) FILTER (WHERE status = 'ready'), "
    "extract(epoch FROM max(finished_at)) FROM bench_jobs",
}


@dataclass(frozen=True)
class Contender:
    name: str
    kind: str  # bgworker | celery | floor
    processes: int = 1
    pool: str = ""  # celery: prefork | threads
    concurrency: int = 4
    queue_type: str = "quorum"  # bgworker's default; Celery's default is classic
    baseline: bool = False  # bgworker: the --baseline commit's code (bench.baseline)

    @property
    def table(self) -> str:
        return "bgworker_requests" if self.kind == "bgworker" else "bench_jobs"


# Concurrency 4 everywhere unless the name says otherwise (bgworker's default is 16 since
# issue 22: "bgworker x1 -c16" is bgworker at its default settings); the queue type is in
# the name where it is not the contender's default, so the table separates the causes.
CONTENDERS: Final = (
    Contender("bgworker x1", "bgworker", processes=1),
    Contender("bgworker x1 classic", "bgworker", processes=1, queue_type="classic"),
    Contender("bgworker x2", "bgworker", processes=2),
    # Celery's best runs at -c20: bgworker at a concurrency of that order.
    Contender("bgworker x1 -c16", "bgworker", processes=1, concurrency=16),
    # Two processes at the default settings: the machine's two cores, as Celery prefork -c2.
    Contender("bgworker x2 -c16", "bgworker", processes=2, concurrency=16),
    Contender("celery threads -c4", "celery", pool="threads", concurrency=4, queue_type="classic"),
    Contender("celery threads -c4 quorum", "celery", pool="threads", concurrency=4),
    Contender(
        "celery threads -c20", "celery", pool="threads", concurrency=20, queue_type="classic"
    ),
    Contender("celery prefork -c2", "celery", pool="prefork", concurrency=2, queue_type="classic"),
    Contender("floor (aio-pika+asyncpg)", "floor", concurrency=4),
)


def baseline_contender(rev: str, concurrency: int = 4) -> Contender:
    suffix = "" if concurrency == 4 else f" -c{concurrency}"
    return Contender(
        f"bgworker@{rev} x1{suffix}", "bgworker", concurrency=concurrency, baseline=True
    )


@dataclass(frozen=True)
class Setup:
    dsn: str
    namespace: str
    logdir: Path
    baseline: tuple[Path, Path] | None = None  # (source tree, python) of --baseline
    amqp_url: str = common.AMQP_URL  # the contenders' (a counting trial's proxy: bench.trips)

    @property
    def database(self) -> str:
        return self.dsn.rsplit("/", 1)[1]

    @property
    def floor_queue(self) -> str:
        return f"{self.namespace}.floor"

    def celery_queue(self, queue_type: str = "classic") -> str:
        return f"{self.namespace}.celery" + ("" if queue_type == "classic" else "q")

    def topology(self, queue_type: str = "quorum") -> topology.Topology:
        # A classic work queue needs its own names: a queue's type cannot change.
        suffix = "" if queue_type == "quorum" else "_classic"
        return topology.Topology(self.namespace + suffix, queue_type=queue_type)


def bgworker_env(setup: Setup, storage: Path, **extra: str) -> dict[str, str]:
    return common.child_env(
        {
            "BGWORKER_AMQP_URL": setup.amqp_url,
            "BGWORKER_DATABASE_URL": setup.dsn,
            "BGWORKER_NAMESPACE": setup.namespace,
            "BGWORKER_STORAGE_DIR": str(storage),
            "BGWORKER_HANDLERS": "bench.handlers:registry",
            "BGWORKER_TOKENS__SECRET_KEYS": secrets.token_urlsafe(24),
            "BGWORKER_LOG_LEVEL": "WARNING",
            **extra,
        }
    )


def start(
    c: Contender, setup: Setup, storage: Path, tag: str, extra: Mapping[str, str] | None = None
) -> list[common.Child]:
    """``extra``: more BGWORKER_* variables for bgworker (bench.s3: the S3 storage)."""
    if c.kind == "bgworker":
        topo = setup.topology(c.queue_type)
        env = bgworker_env(
            setup,
            storage,
            BGWORKER_NAMESPACE=topo.namespace,
            BGWORKER_QUEUE_TYPE=c.queue_type,
            BGWORKER_WORKER__CONCURRENCY=str(c.concurrency),
            **(extra or {}),
        )
        where: dict[str, Any] = {}
        if c.baseline:
            assert setup.baseline is not None
            src, python = setup.baseline
            # The baseline's own tree (its bench.handlers), never this one's bgworker.
            env["PYTHONPATH"] = str(src)
            where = {"python": str(python), "cwd": src}
        return [
            common.python_child(
                f"{tag}-bgworker-{i}", ["bgworker", "worker"], env, setup.logdir, **where
            )
            for i in range(c.processes)
        ]
    if c.kind == "celery":
        env = common.child_env(
            {
                "BENCH_AMQP_URL": setup.amqp_url,
                "BENCH_DSN": setup.dsn,
                "BENCH_STORAGE": str(storage),
                "BENCH_CELERY_QUEUE": setup.celery_queue(c.queue_type),
                "BENCH_CELERY_QUEUE_TYPE": c.queue_type,
            }
        )
        argv = [
            "celery",
            "-A",
            "bench.celery_app",
            "worker",
            "-P",
            c.pool,
            "-c",
            str(c.concurrency),
            "-Q",
            setup.celery_queue(c.queue_type),
            "-l",
            "WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
        return [common.python_child(f"{tag}-celery-{c.pool}", argv, env, setup.logdir)]
    argv = [
        "bench.floor",
        "--queue",
        setup.floor_queue,
        "--dsn",
        setup.dsn,
        "--storage",
        str(storage),
        "--prefetch",
        str(c.concurrency),
        "--amqp-url",
        setup.amqp_url,
    ]
    return [common.python_child(f"{tag}-floor", argv, common.child_env({}), setup.logdir)]


def _bgworker_message(request_id: uuid.UUID, seed: int) -> aio_pika.Message:
    event = events.FileRequested(
        id=request_id,
        file_type="bench_csv",
        criteria={"seed": seed},
        filename=f"bench-{seed}.csv",
        content_type="text/csv",
    )
    return _bgworker_message_for(event)


def _bgworker_message_for(event: events.FileRequested) -> aio_pika.Message:
    # Fields left empty are left out, as a producer sends them: a baseline from before a
    # field existed (callback_url) refuses it, even empty, as an extra input.
    return wire.request(event.model_dump(mode="json", exclude_none=True), str(event.id))


def _floor_message(request_id: uuid.UUID, seed: int) -> aio_pika.Message:
    body = json.dumps({"id": str(request_id), "seed": seed}).encode()
    return aio_pika.Message(
        body,
        content_type="application/json",
        delivery_mode=DeliveryMode.PERSISTENT,
        message_id=str(request_id),
    )


def _celery_message(request_id: uuid.UUID, seed: int) -> aio_pika.Message:
    """Celery's task message protocol 2, as ``apply_async`` sends it."""
    task_id = str(request_id)
    body = json.dumps(
        [[task_id, seed], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    ).encode()
    headers: dict[str, Any] = {
        "lang": "py",
        "task": celery_app.TASK_NAME,
        "id": task_id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": repr((task_id, seed)),
        "kwargsrepr": "{}",
        "origin": "bench",
        "ignore_result": True,
    }
    return aio_pika.Message(
        body,
        content_type="application/json",
        content_encoding="utf-8",
        delivery_mode=DeliveryMode.PERSISTENT,
        correlation_id=task_id,
        headers=headers,
        priority=0,
    )


def route(c: Contender, setup: Setup) -> tuple[str, str, str, Callable[..., aio_pika.Message]]:
    """(exchange, routing key, queue, message factory) for a contender."""
    if c.kind == "bgworker":
        topo = setup.topology(c.queue_type)
        return topo.requests_exchange, topology.REQUESTED_KEY, topo.work_queue, _bgworker_message
    if c.kind == "celery":
        queue = setup.celery_queue(c.queue_type)
        return "", queue, queue, _celery_message
    return "", setup.floor_queue, setup.floor_queue, _floor_message


async def declare(setup: Setup) -> None:
    """Queues exist before any worker starts, so publishing never races a declare."""
    connection = await common.amqp_connect("bench-declare")
    try:
        channel = await connection.channel()
        await setup.topology("quorum").declare(channel)
        await setup.topology("classic").declare(channel)
        # The floor gets bgworker's queue type (quorum); Celery its own default (classic),
        # and quorum as a contender of its own (the arguments bench.celery_app declares).
        quorum = {"x-queue-type": "quorum"}
        await channel.declare_queue(setup.floor_queue, durable=True, arguments=quorum)
        await channel.declare_queue(setup.celery_queue("classic"), durable=True)
        await channel.declare_queue(setup.celery_queue("quorum"), durable=True, arguments=quorum)
    finally:
        await connection.close()


async def cleanup(setup: Setup) -> None:
    connection = await common.amqp_connect("bench-cleanup")
    try:
        channel = await connection.channel()
        await setup.topology("quorum").delete(channel)
        await setup.topology("classic").delete(channel)
    finally:
        await connection.close()
    celery = [setup.celery_queue("classic"), setup.celery_queue("quorum")]
    await common.delete_queues([setup.floor_queue, *celery], exchanges=celery)


async def trial(
    c: Contender,
    setup: Setup,
    storage: Path,
    n: int,
    tag: str,
    extra: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """One timed run: fresh processes, ``n`` requests, back to an empty table."""
    return await _trial(c, setup, storage, n, tag, extra, None)


async def counted(c: Contender, setup: Setup, storage: Path, n: int, tag: str) -> dict[str, Any]:
    """An untimed run through the counting proxy (bench.trips): round trips per job."""
    async with trips.counting(setup.dsn, setup.amqp_url) as via:
        got = await _trial(c, setup, storage, n, tag, None, via)
    return {k: v for k, v in got.items() if k.endswith(trips.FIGURES)}


async def _trial(
    c: Contender,
    setup: Setup,
    storage: Path,
    n: int,
    tag: str,
    extra: Mapping[str, str] | None,
    via: trips.Counting | None,
) -> dict[str, Any]:
    # The contender reaches the services through the proxy when counting; the bench direct.
    workers = (
        setup if via is None else dataclasses.replace(setup, dsn=via.dsn, amqp_url=via.amqp_url)
    )
    await declare(setup)
    await common.reset_tables(setup.dsn)
    common.empty_dir(storage)
    exchange, key, queue, factory = route(c, setup)
    seeds = range(n)
    messages = [factory(uuid.uuid4(), seed) for seed in seeds]
    children = start(c, workers, storage, tag, extra)
    connection = await common.amqp_connect("bench-publisher")
    # A broker restart that everyone rides out still ruins the timing: run the trial again.
    restarted: list[object] = []
    connection.reconnect_callbacks.add(lambda *_: restarted.append(True))
    db = await asyncpg.connect(setup.dsn)
    admin = await asyncpg.connect(common.PG_ADMIN)
    polls = 0
    services_cpu = services.ServiceCpu(admin, setup.database, exclude=db.get_server_pid())
    try:
        await common.wait_consumers(connection, queue, 1)
        if c.kind == "bgworker":
            await common.wait_consumers(connection, queue, c.processes)
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        cpu_before = common.cpu_seconds(p for ch in children for p in common.tree_pids(ch.pid))
        await services_cpu.start()
        trips_before = via.snapshot() if via else None
        t0 = time.time()
        await common.publish_all(channel, exchange, key, messages)
        published = time.time() - t0
        deadline = time.monotonic() + 60 + n / 10
        while True:
            ready, last = await db.fetchrow(READY_SQL[c.table])
            polls += 1
            if ready >= n:
                break
            for child in children:
                child.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{c.name}: {ready}/{n} ready after the deadline")
            await asyncio.sleep(0.05)
        cpu = common.cpu_seconds(p for ch in children for p in common.tree_pids(ch.pid))
        shared = await services_cpu.cpu(n)
        if via and trips_before:
            shared |= via.per_job(trips_before, n)
        elapsed = float(last) - t0
        if restarted:
            raise ConnectionError("RabbitMQ restarted during the trial")
        await db.close()  # its commits are flushed to the statistics as it ends
        for child in children:
            await child.stop()
        shared |= await services_cpu.commits(n, own=polls)
    finally:
        if not db.is_closed():
            await db.close()
        await admin.close()
        await connection.close()
        for child in children:
            await child.stop()
    worker = (cpu - cpu_before) * 1000 / n
    return {
        "msg_per_s": n / elapsed,
        "seconds": elapsed,
        "publish_seconds": published,
        "worker_cpu_ms_per_job": worker,
        **shared,
        "total_cpu_ms_per_job": worker
        + shared["broker_cpu_ms_per_job"]
        + shared["pg_cpu_ms_per_job"],
    }


def _picks(wanted: str, c: Contender, everyone: list[Contender]) -> bool:
    """``--contenders`` item: a contender's exact name, else a part of names."""
    if any(wanted == x.name for x in everyone):
        return wanted == c.name
    return wanted in c.name


def ratios(med: dict[str, float]) -> dict[str, float]:
    """Each bgworker contender against the best Celery, the floor and the baseline."""
    best_celery = max((v for k, v in med.items() if k.startswith("celery")), default=None)
    floor = next((v for k, v in med.items() if k.startswith("floor")), None)
    base = next((v for k, v in med.items() if k.startswith("bgworker@")), None)
    out: dict[str, float] = {}
    bgworkers = [name for name in med if name.startswith("bgworker")]
    for against, value in (("best celery", best_celery), ("floor", floor)):
        for name in bgworkers:
            if value:
                out[f"{name} / {against}"] = med[name] / value
    for name in bgworkers:
        if base and not name.startswith("bgworker@"):
            out[f"{name} / baseline"] = med[name] / base
    return out


async def run(
    dsn: str,
    storages: dict[str, Path],
    n: int,
    reps: int,
    logdir: Path,
    only: str | None = None,
    baseline_rev: str | None = None,
    count: bool = True,
) -> dict[str, Any]:
    """``count``: after the timed repetitions, one counting trial per contender (round
    trips per job through bench.trips' proxy; untimed, the proxy slows what it counts)."""
    everyone = list(CONTENDERS)
    installed = None
    if baseline_rev:
        short = baseline.resolve(baseline_rev)
        installed = baseline.install(short)
        everyone.insert(1, baseline_contender(short))
        # The baseline at -c16 too, only when named (a paired run of a change at -c16).
        if only and f"bgworker@{short} x1 -c16" in only.split(","):
            everyone.insert(2, baseline_contender(short, 16))
    contenders = [
        c for c in everyone if not only or any(_picks(o, c, everyone) for o in only.split(","))
    ]
    setup = Setup(dsn, f"bgw_bench_{uuid.uuid4().hex[:8]}", logdir, installed)
    await declare(setup)
    results: dict[str, dict[str, dict[str, common.Series]]] = {
        where: {c.name: {} for c in contenders} for where in storages
    }

    async def one(c: Contender, where: str, label: str, how: Any) -> dict[str, Any]:
        tag = f"{label}-{where}-{c.kind}{c.processes}{c.pool}{c.concurrency}"
        tag += f"{c.queue_type[0]}{'-base' if c.baseline else ''}"
        what = f"{c.name} {where}" + (" (counting)" if how is counted else "")
        got: dict[str, Any] = await common.retrying(
            what, functools.partial(how, c, setup, storages[where], n, tag)
        )
        for k, v in got.items():
            results[where][c.name].setdefault(k, common.Series()).add(v)
        return got

    try:
        for rep in range(reps):
            for where in storages:
                # Interleaved: every contender sees the same stretch of machine noise.
                for c in contenders:
                    got = await one(c, where, f"r{rep}", trial)
                    common.log(
                        f"throughput {where:5} rep {rep + 1}/{reps} {c.name:26} "
                        f"{got['msg_per_s']:8.0f} msg/s  "
                        f"({got['worker_cpu_ms_per_job']:.2f} ms worker CPU/job, "
                        f"{got['total_cpu_ms_per_job']:.2f} total, "
                        f"{got['pg_commits_per_job']:.1f} PG commits/job)"
                    )
        for where in storages if count else ():
            for c in contenders:
                got = await one(c, where, "count", counted)
                common.log(
                    f"throughput {where:5} counted   {c.name:26} "
                    f"{got['pg_round_trips_per_job']:.2f} PG round trips/job, "
                    f"{got['amqp_methods_per_job']:.2f} AMQP methods/job"
                )
    finally:
        await common.wait_for_services()
        await cleanup(setup)
    out: dict[str, Any] = {"requests": n, "repetitions": reps, "storage": {}}
    for where, by_name in results.items():
        rows = {name: {k: s.to_json() for k, s in m.items()} for name, m in by_name.items()}
        med = {name: m["msg_per_s"].median for name, m in by_name.items()}
        out["storage"][where] = {
            "contenders": rows,
            "ratios": ratios(med),
        }
    return out


if __name__ == "__main__":
    sys.exit("run through `python -m bench run`")
