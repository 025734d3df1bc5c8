"""Benchmark 2: publish -> ``ready`` and publish -> email received at a steady offered load.

One ``bgworker worker`` process (default concurrency), files on tmpfs, an aiosmtpd sink
(``bgworker.cli.smtp_sink.SmtpSink``) in this process. Requests are published open-loop: request
i leaves at t0 + i/rate whether or not earlier ones are done. Ready times come from the
row's ``finished_at`` (same clock: same machine), email times from the sink's arrivals.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from pathlib import Path
from typing import Any, Final

import asyncpg

from bench import common, throughput
from bgworker.cli.smtp_sink import SmtpSink
from bgworker.contract import events
from bgworker.messaging import topology

MESSAGE_ID_RE: Final = re.compile(r"<([0-9a-f-]{36})\.")


async def run(dsn: str, storage: Path, rate: float, seconds: float, logdir: Path) -> dict[str, Any]:
    setup = throughput.Setup(dsn, f"bgw_bench_{uuid.uuid4().hex[:8]}", logdir)
    await throughput.declare(setup)
    await common.reset_tables(dsn)
    n = max(1, int(rate * seconds))
    published: dict[uuid.UUID, float] = {}
    emailed: dict[uuid.UUID, float] = {}
    async with SmtpSink() as sink:
        env = throughput.bgworker_env(
            setup,
            storage,
            BGWORKER_SMTP__PORT=str(sink.port),
            BGWORKER_WEB__PUBLIC_URL="http://127.0.0.1:1",
        )
        child = common.python_child("latency-bgworker", ["bgworker", "worker"], env, logdir)
        connection = await common.amqp_connect("bench-latency")
        db = await asyncpg.connect(dsn)

        async def watch_mail() -> None:
            seen = 0
            while True:
                sink.changed.clear()
                while seen < len(sink.messages):
                    match = MESSAGE_ID_RE.search(str(sink.messages[seen]["Message-ID"]))
                    if match:
                        emailed.setdefault(uuid.UUID(match[1]), time.time())
                    seen += 1
                await sink.changed.wait()

        watcher = asyncio.create_task(watch_mail())
        try:
            topo = topology.Topology(setup.namespace)
            await common.wait_consumers(connection, topo.work_queue, 1)
            # The worker's CPU over the run (startup excluded): jobs, emails and events.
            cpu_before = common.cpu_seconds([child.pid])
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            exchange = await channel.get_exchange(topo.requests_exchange)
            sends: list[asyncio.Task[None]] = []

            async def send(event: events.FileRequested) -> None:
                message = throughput._bgworker_message_for(event)
                published[event.id] = time.time()
                await exchange.publish(message, topology.REQUESTED_KEY, mandatory=True)

            loop = asyncio.get_running_loop()
            start = loop.time()
            for i in range(n):
                event = events.FileRequested(
                    id=uuid.uuid4(),
                    file_type="bench_csv",
                    criteria={"seed": i},
                    filename=f"latency-{i}.csv",
                    content_type="text/csv",
                    requester=events.Requester(id=f"user-{i}", email=f"user{i}@example.com"),
                )
                delay = start + i / rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                sends.append(asyncio.create_task(send(event)))
            await asyncio.gather(*sends)
            async with asyncio.timeout(60 + seconds):
                while len(emailed) < n:
                    child.check_alive()
                    await asyncio.sleep(0.1)
            worker_cpu_ms = (common.cpu_seconds([child.pid]) - cpu_before) * 1000 / n
            # received_at: the claim's transaction (the row is inserted claimed).
            rows = await db.fetch(
                "SELECT id, extract(epoch FROM finished_at) AS t, "
                "extract(epoch FROM received_at) AS claimed FROM bgworker_requests "
                "WHERE status = 'ready'"
            )
        finally:
            watcher.cancel()
            await db.close()
            await connection.close()
            await child.stop()
            await throughput.cleanup(setup)
    ready_ms = [(float(r["t"]) - published[r["id"]]) * 1000 for r in rows]
    # Where the time goes: waiting to be taken and claimed, or the job itself.
    claim_ms = [(float(r["claimed"]) - published[r["id"]]) * 1000 for r in rows]
    mail_ms = [(t - published[i]) * 1000 for i, t in emailed.items()]
    return {
        "offered_rate": rate,
        "requests": n,
        "ready_ms": {f"p{q}": common.percentile(ready_ms, q) for q in (50, 95, 99)},
        "email_ms": {f"p{q}": common.percentile(mail_ms, q) for q in (50, 99)},
        "claim_ms": {f"p{q}": common.percentile(claim_ms, q) for q in (50, 99)},
        "worker_cpu_ms_per_job": worker_cpu_ms,
        "ready_samples": len(ready_ms),
        "email_samples": len(mail_ms),
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each percentile over the repetitions: median [min-max]."""
    out: dict[str, Any] = {
        "offered_rate": runs[0]["offered_rate"],
        "requests_per_run": runs[0]["requests"],
        "runs": runs,
    }
    for figure in ("ready_ms", "email_ms", "claim_ms"):
        out[figure] = {}
        for q in runs[0].get(figure, {}):
            series = common.Series([r[figure][q] for r in runs])
            out[figure][q] = series.to_json()
    if all("worker_cpu_ms_per_job" in r for r in runs):  # results from before it: absent
        out["worker_cpu_ms_per_job"] = common.Series(
            [r["worker_cpu_ms_per_job"] for r in runs]
        ).to_json()
    return out
