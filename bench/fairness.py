"""Fair share (issue 21): tenant A publishes N requests, then tenants B..E publish M each.

    python -m bench.fairness [--a 2000] [--others 20] [--job-ms 250] [--workers 2]
                             [--concurrency 8] [--run fifo --run share --run cap=12 ...]

Runs the same workload on fresh queues and tables, once per ``--run`` (default: fifo and
share): ``fifo`` neither fair share nor caps (one FIFO queue: B..E wait behind all of A),
``share`` fair share (``BGWORKER_FAIRNESS__SHARE``, work-conserving), ``cap=N`` the hard
cap ``BGWORKER_FAIRNESS__TENANT_IN_FLIGHT=N`` alone, ``share+cap=N`` both.
A request's wait is its start (the row's ``started_at``) minus its publish time
(one machine, one clock). A's throughput is its requests over the time from its first start
to its last finish. Prints a markdown table per run and the comparison; ``--json`` writes
the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Final

import asyncpg

from bench import common
from bgworker.contract import events
from bgworker.messaging import topology, wire

TENANTS: Final = ("B", "C", "D", "E")


def _mode(run: str) -> tuple[bool, int]:
    """(share, cap) of a ``--run``."""
    share = run == "share" or run.startswith("share+")
    _, _, cap = run.partition("cap=")
    return share, int(cap or 0)


async def _run_once(
    dsn: str, storage: Path, logdir: Path, args: argparse.Namespace, run: str
) -> dict[str, Any]:
    share, cap = _mode(run)
    # Not bench.throughput's helpers: they import the contenders (celery), which this
    # benchmark does not need installed.
    topo = topology.Topology(f"bgw_fair_{uuid.uuid4().hex[:8]}")
    connection = await common.amqp_connect("bench-fairness")
    await topo.declare(await connection.channel())
    await common.reset_tables(dsn)
    env = common.child_env(
        {
            "BGWORKER_AMQP_URL": common.AMQP_URL,
            "BGWORKER_DATABASE_URL": dsn,
            "BGWORKER_NAMESPACE": topo.namespace,
            "BGWORKER_STORAGE_DIR": str(storage),
            "BGWORKER_HANDLERS": "bench.handlers:registry",
            "BGWORKER_TOKENS__SECRET_KEYS": secrets.token_urlsafe(24),
            "BGWORKER_LOG_LEVEL": "WARNING",
            "BGWORKER_WORKER__CONCURRENCY": str(args.concurrency),
            "BGWORKER_FAIRNESS__TENANT_IN_FLIGHT": str(cap),
            "BGWORKER_FAIRNESS__SHARE": str(share).lower(),
        }
    )
    tag = f"fair-{run.replace('=', '')}"
    children = [
        common.python_child(f"{tag}-{i}", ["bgworker", "worker"], env, logdir)
        for i in range(args.workers)
    ]
    published: dict[uuid.UUID, tuple[str, float]] = {}
    try:
        await common.wait_consumers(connection, topo.work_queue, args.workers)
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)

        def batch(tenant: str, n: int) -> list[Any]:
            messages = []
            for i in range(n):
                event = events.FileRequested(
                    id=uuid.uuid4(),
                    file_type="bench_sleep",
                    criteria={"ms": args.job_ms, "seed": i},
                    tenant=tenant,
                )
                published[event.id] = (tenant, 0.0)
                body = event.model_dump(mode="json", exclude_none=True)
                messages.append((event, wire.request(body, str(event.id))))
            return messages

        async def send(items: list[Any]) -> None:
            now = time.time()
            for event, _ in items:
                published[event.id] = (published[event.id][0], now)
            await common.publish_all(
                channel, topo.requests_exchange, topology.REQUESTED_KEY, [m for _, m in items]
            )

        big = batch("A", args.a)
        small = [item for t in TENANTS for item in batch(t, args.others)]
        await send(big)
        await send(small)
        db = await asyncpg.connect(dsn)
        try:
            async with asyncio.timeout(args.timeout):
                while True:
                    for child in children:
                        child.check_alive()
                    done = await db.fetchval(
                        "SELECT count(*) FROM bgworker_requests WHERE status = 'ready'"
                    )
                    if done >= len(published):
                        break
                    await asyncio.sleep(0.5)
            rows = await db.fetch(
                "SELECT id, received_at, started_at, finished_at, attempts FROM bgworker_requests"
            )
        finally:
            await db.close()
    finally:
        for child in children:
            await child.stop()
        await topo.delete(await connection.channel())
        await connection.close()
    waits: dict[str, list[float]] = {}
    # Publish to first recorded (parked, under fair share or a cap): how long the backlog
    # ahead kept B..E out of PostgreSQL's reach.
    recorded: list[float] = []
    a_spans: list[tuple[float, float]] = []
    all_spans: list[tuple[float, float]] = []
    for row in rows:
        all_spans.append((row["started_at"].timestamp(), row["finished_at"].timestamp()))
        tenant, at = published[row["id"]]
        waits.setdefault(tenant, []).append(row["started_at"].timestamp() - at)
        if tenant != "A":
            recorded.append(row["received_at"].timestamp() - at)
        if tenant == "A":
            a_spans.append((row["started_at"].timestamp(), row["finished_at"].timestamp()))
    a_seconds = max(f for _, f in a_spans) - min(s for s, _ in a_spans)
    return {
        "run": run,
        "per_tenant": {
            t: {
                "n": len(w),
                "p50": common.percentile(w, 50),
                "p95": common.percentile(w, 95),
                "max": max(w),
            }
            for t, w in sorted(waits.items())
        },
        "a_jobs_per_second": len(a_spans) / a_seconds,
        "a_seconds": a_seconds,
        "b_e_recorded_p95": common.percentile(recorded, 95),
        # Every tenant's jobs over the whole run's span: under fair share B..E's jobs run
        # inside A's span, so A's own rate drops by their share (80 of 2,080: 3.8%) even at
        # no cost; this one does not.
        "all_jobs_per_second": len(all_spans)
        / (max(f for _, f in all_spans) - min(s for s, _ in all_spans)),
    }


def table(result: dict[str, Any]) -> str:
    label = result["run"]
    lines = [
        f"| {label}: tenant | requests | wait p50 s | wait p95 s | wait max s |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for tenant, s in result["per_tenant"].items():
        lines.append(f"| {tenant} | {s['n']} | {s['p50']:.2f} | {s['p95']:.2f} | {s['max']:.2f} |")
    lines.append(
        f"| A's throughput | {result['a_jobs_per_second']:.1f} jobs/s | "
        f"({result['a_seconds']:.1f} s) | | |"
    )
    lines.append(f"| all tenants' throughput | {result['all_jobs_per_second']:.1f} jobs/s | | | |")
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    logdir = Path(tempfile.mkdtemp(prefix="bgw_fair_logs_"))
    results = []
    async with common.bench_database() as dsn:
        with common.storage_dir(Path(tempfile.gettempdir()), "fair") as storage:
            for run in args.run:
                common.log(f"fairness: run {run}")
                results.append(await _run_once(dsn, storage, logdir, args, run))
                common.empty_dir(storage)
    off = results[0]
    summary: dict[str, Any] = {
        "job_seconds": args.job_ms / 1000,
        "slots": args.workers * args.concurrency,
    }
    for run in results:
        others = [t for t in TENANTS if t in run["per_tenant"]]
        summary[run["run"]] = {
            "b_e_p95_wait": max(run["per_tenant"][t]["p95"] for t in others),
            "b_e_max_wait": max(run["per_tenant"][t]["max"] for t in others),
            "a_jobs_per_second": run["a_jobs_per_second"],
            "a_p95_wait": run["per_tenant"]["A"]["p95"],
            "b_e_recorded_p95": run["b_e_recorded_p95"],
            "a_throughput_change": run["a_jobs_per_second"] / off["a_jobs_per_second"] - 1,
            "all_jobs_per_second": run["all_jobs_per_second"],
            "all_throughput_change": run["all_jobs_per_second"] / off["all_jobs_per_second"] - 1,
        }
        print(table(run))
        print()
    print(json.dumps(summary, indent=1))
    return {"runs": results, "summary": summary, "logs": str(logdir)}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.fairness", description=__doc__)
    p.add_argument("--a", type=int, default=2000, help="requests of tenant A")
    p.add_argument("--others", type=int, default=20, help="requests of each of B..E")
    p.add_argument("--job-ms", type=int, default=250, help="each job's length")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument(
        "--run",
        action="append",
        help="fifo, share, cap=N or share+cap=N (repeatable; default fifo and share); "
        "A's throughput change is against the first",
    )
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args(argv)
    args.run = args.run or ["fifo", "share"]
    for run in args.run:
        if run not in ("fifo", "share") and not run.removeprefix("share+").startswith("cap="):
            p.error(f"--run {run!r}: fifo, share, cap=N or share+cap=N")
    return args


if __name__ == "__main__":
    arguments = parse()
    out = asyncio.run(main(arguments))
    if arguments.json:
        arguments.json.write_text(json.dumps(out, indent=1, default=str) + "\n")
