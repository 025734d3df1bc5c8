"""What each producer path costs: ``POST /requests`` against a ``bgworker serve`` process,
next to the AMQP ``Publisher`` in this process, both confirmed by RabbitMQ.

    .venv/bin/python -m bench.front_door [--requests 2000] [--concurrency 16]

Printed, never asserted (no timing belongs in a test). No worker runs: the figures are the
intake alone, up to RabbitMQ's confirm. Three runs of each path, new ids each time, then the
same ids posted again (a retry: PostgreSQL reads only, no publish). One fresh database and
namespace, removed afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Final

import aiohttp

from bench import common
from bgworker.contract import events
from bgworker.messaging import publisher, topology

RUNS: Final = 3
KEY: Final = secrets.token_urlsafe(24)


def _event() -> events.FileRequested:
    return events.FileRequested(id=uuid.uuid4(), file_type="login_events", criteria={"rows": 1})


async def _timed(bodies: list[Any], concurrency: int, send: Any) -> tuple[float, list[float]]:
    """(requests per second, each call's seconds) of ``send`` over ``bodies``, at most
    ``concurrency`` at once."""
    slots = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one(body: Any) -> None:
        async with slots:
            started = time.perf_counter()
            await send(body)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(one(b) for b in bodies))
    return len(bodies) / (time.perf_counter() - started), latencies


def _row(name: str, rates: common.Series, latencies: list[float]) -> str:
    p50 = common.percentile(latencies, 50) * 1000
    p99 = common.percentile(latencies, 99) * 1000
    spread = f"[{min(rates.values):.0f}-{max(rates.values):.0f}]"
    return f"{name:<34} {rates.median:>8.0f}/s {spread:>12} p50 {p50:6.2f} ms  p99 {p99:6.2f} ms"


async def _wait_http(url: str, child: common.Child) -> None:
    async with asyncio.timeout(30), aiohttp.ClientSession() as session:
        while True:
            child.check_alive()
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)


async def run(requests: int, concurrency: int) -> None:
    namespace = f"bgw_bench_front_{uuid.uuid4().hex[:8]}"
    port = 18000 + secrets.randbelow(2000)
    base = f"http://127.0.0.1:{port}"
    async with common.bench_database() as dsn:
        logdir = Path(tempfile.mkdtemp(prefix="bgw_bench_front_"))
        env = common.child_env(
            {
                "BGWORKER_AMQP_URL": common.AMQP_URL,
                "BGWORKER_DATABASE_URL": dsn,
                "BGWORKER_NAMESPACE": namespace,
                "BGWORKER_TOKENS__SECRET_KEYS": secrets.token_urlsafe(24),
                "BGWORKER_WEB__API_KEYS": KEY,
                "BGWORKER_WEB__PORT": str(port),
                "BGWORKER_LOG_LEVEL": "WARNING",
            }
        )
        server = common.python_child("front-serve", ["bgworker", "serve"], env, logdir)
        pub = publisher.Publisher(common.AMQP_URL, namespace=namespace)
        try:
            await _wait_http(f"{base}/healthz", server)
            await pub.connect()
            headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
            connector = aiohttp.TCPConnector(limit=concurrency)
            async with aiohttp.ClientSession(connector=connector) as session:

                async def post(body: bytes) -> None:
                    async with session.post(f"{base}/requests", data=body, headers=headers) as r:
                        assert r.status == 202, (r.status, await r.text())

                await post(_event().model_dump_json().encode())  # the first POST connects
                figures: dict[str, tuple[common.Series, list[float]]] = {}
                for _ in range(RUNS):
                    batch = [_event() for _ in range(requests)]
                    bodies = [e.model_dump_json().encode() for e in batch]
                    for name, items, send in (
                        ("POST /requests, new ids", bodies, post),
                        ("POST /requests, the same ids again", bodies, post),
                        ("Publisher.publish (AMQP)", [_event() for _ in batch], pub.publish),
                    ):
                        rate, latencies = await _timed(items, concurrency, send)
                        series, kept = figures.setdefault(name, (common.Series(), []))
                        series.add(rate)
                        kept.extend(latencies)
            print(f"producer paths: {requests} requests a run, {concurrency} at once, {RUNS} runs")
            for name, (series, latencies) in figures.items():
                print(_row(name, series, latencies))
        finally:
            await pub.close()
            await server.stop()
            connection = await common.amqp_connect("bench-front-cleanup")
            try:
                await topology.Topology(namespace).delete(await connection.channel())
            finally:
                await connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    asyncio.run(run(args.requests, args.concurrency))


if __name__ == "__main__":
    main()
