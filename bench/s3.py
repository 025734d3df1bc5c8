"""``python -m bench.s3 [--requests N] [--seconds S]``: S3 storage next to the local
directory. Printed, never asserted; the S3 server is moto's (a Python process on loopback),
so S3 figures bound what a real object store would cost the worker and the server.

1. Worker throughput: N ``bench_csv`` jobs (10 KiB each) with 1, 2 and 4 worker processes,
   local directory vs S3 (one PutObject per file), jobs/s and worker CPU per job.
2. Downloads of 100 KiB and 10 MiB files kept in S3: ``serve`` streaming from S3, and the
   "S3 redirect" contender: the 302 alone (the token check, the row lookup and the presign:
   what the server pays per download, the bytes never pass through it), and the 302
   followed to the object store. Requests/s and the server's CPU per request and per GiB.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Final

import aiohttp
import asyncpg
from aiobotocore.session import get_session
from pydantic import SecretStr

from bench import common, throughput
from bgworker import settings as settings_mod
from bgworker.cli.smtp_sink import free_port
from bgworker.contract import events
from bgworker.links import tokens
from bgworker.messaging import publisher

KEY: Final = "bench-s3"
SECRET: Final = "bench-s3-secret"
SIZES: Final = {"100 KiB": 100 * 1024, "10 MiB": 10 * 1024 * 1024}
CONCURRENCY: Final = 4


async def _wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url) as response:
                    await response.read()
                    return
            except aiohttp.ClientError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)


async def _moto(logdir: Path) -> tuple[common.Child, str]:
    port = free_port()
    child = common.python_child(
        "moto", ["moto.server", "-H", "127.0.0.1", "-p", str(port)], common.child_env({}), logdir
    )
    url = f"http://127.0.0.1:{port}"
    await _wait_http(url + "/")
    return child, url


async def _s3_env(url: str) -> dict[str, str]:
    bucket = f"bench-{uuid.uuid4().hex[:12]}"
    async with get_session().create_client(
        "s3",
        region_name="us-east-1",
        endpoint_url=url,
        aws_access_key_id=KEY,
        aws_secret_access_key=SECRET,
    ) as client:
        await client.create_bucket(Bucket=bucket)
    return {
        "BGWORKER_STORAGE__BACKEND": "s3",
        "BGWORKER_STORAGE__S3_BUCKET": bucket,
        "BGWORKER_STORAGE__S3_ENDPOINT_URL": url,
        "BGWORKER_STORAGE__S3_ACCESS_KEY_ID": KEY,
        "BGWORKER_STORAGE__S3_SECRET_ACCESS_KEY": SECRET,
    }


async def worker_throughput(
    setup: throughput.Setup, storage: Path, s3_env: dict[str, str], n: int
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for where, extra in (("local", {}), ("s3", s3_env)):
        for processes in (1, 2, 4):
            contender = throughput.Contender(f"bgworker x{processes}", "bgworker", processes)
            tag = f"s3bench-{where}-{processes}"
            got = await throughput.trial(contender, setup, storage, n, tag, extra)
            out[f"{where} x{processes}"] = got
            common.log(
                f"worker {where:5} x{processes}: {got['msg_per_s']:7.0f} jobs/s  "
                f"({got['worker_cpu_ms_per_job']:.2f} ms CPU/job)"
            )
    return out


async def _build(setup: throughput.Setup, env: dict[str, str], size: int) -> uuid.UUID:
    """One ``bench_bytes`` file of ``size`` bytes built by a worker on S3."""
    worker = common.python_child("s3bench-builder", ["bgworker", "worker"], env, setup.logdir)
    event = events.FileRequested(
        id=uuid.uuid4(),
        file_type="bench_bytes",
        criteria={"size": size, "seed": size},
        filename="bench.bin",
        content_type="application/octet-stream",
    )
    try:
        async with publisher.Publisher(common.AMQP_URL, namespace=setup.namespace) as pub:
            await pub.publish(event)
        db = await asyncpg.connect(setup.dsn)
        try:
            deadline = time.monotonic() + 300
            while (
                await db.fetchval("SELECT status FROM bgworker_requests WHERE id = $1", event.id)
                != "ready"
            ):
                worker.check_alive()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the {size}-byte file was not built")
                await asyncio.sleep(0.1)
        finally:
            await db.close()
    finally:
        await worker.stop()
    return event.id


async def _hammer(url: str, seconds: float, follow: bool) -> tuple[int, int]:
    """(requests, bytes) done by CONCURRENCY clients in ``seconds``."""
    done = received = 0
    stop = time.monotonic() + seconds

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal done, received
        while time.monotonic() < stop:
            async with session.get(url, allow_redirects=follow) as response:
                assert response.status == (200 if follow else 302), response.status
                async for chunk in response.content.iter_chunked(1024 * 1024):
                    received += len(chunk)
            done += 1

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(client(session) for _ in range(CONCURRENCY)))
    return done, received


async def downloads(
    setup: throughput.Setup, storage: Path, s3_env: dict[str, str], seconds: float
) -> dict[str, Any]:
    key = secrets.token_urlsafe(24)
    env = throughput.bgworker_env(
        setup, storage, **s3_env, BGWORKER_TOKENS__SECRET_KEYS=key, BGWORKER_LOG_LEVEL="ERROR"
    )
    signer = tokens.Signer(settings_mod.TokenSettings(secret_keys=[SecretStr(key)]))
    out: dict[str, Any] = {}
    for label, size in SIZES.items():
        await throughput.declare(setup)
        await common.reset_tables(setup.dsn)
        request_id = await _build(setup, env, size)
        for name, mode, follow in (
            ("bgworker stream (S3)", "stream", True),
            ("S3 redirect: 302 only", "redirect", False),
            ("S3 redirect, followed", "redirect", True),
        ):
            port = free_port()
            serve = common.python_child(
                f"s3bench-serve-{mode}",
                ["bgworker", "serve", "--port", str(port)],
                {**env, "BGWORKER_WEB__DOWNLOAD_MODE": mode},
                setup.logdir,
            )
            try:
                await _wait_http(f"http://127.0.0.1:{port}/healthz")
                url = f"http://127.0.0.1:{port}/download/{signer.general(request_id)}"
                cpu0 = common.cpu_seconds([serve.pid])
                t0 = time.monotonic()
                n, got = await _hammer(url, seconds, follow)
                elapsed = time.monotonic() - t0
                cpu = common.cpu_seconds([serve.pid]) - cpu0
            finally:
                await serve.stop()
            row = {
                "requests_per_s": n / elapsed,
                "mib_per_s": got / elapsed / 2**20,
                "server_cpu_ms_per_request": cpu * 1000 / max(n, 1),
                "server_cpu_s_per_gib": cpu / (got / 2**30) if got else None,
            }
            out[f"{label} {name}"] = row
            per_gib = row["server_cpu_s_per_gib"]
            common.log(
                f"download {label:7} {name:22} {row['requests_per_s']:8.1f} req/s "
                f"{row['mib_per_s']:8.1f} MiB/s  server {row['server_cpu_ms_per_request']:.2f}"
                f" ms CPU/req" + (f", {per_gib:.2f} s CPU/GiB" if per_gib else "")
            )
    return out


async def main(n: int, seconds: float) -> dict[str, Any]:
    await common.wait_for_services()
    logdir = Path(tempfile.mkdtemp(prefix="bgw_bench_s3_"))
    storage = logdir / "files"
    storage.mkdir()
    moto, url = await _moto(logdir)
    results: dict[str, Any] = {}
    try:
        s3_env = await _s3_env(url)
        async with common.bench_database() as dsn:
            setup = throughput.Setup(dsn, f"bgw_bench_{uuid.uuid4().hex[:8]}", logdir)
            try:
                results["worker"] = await worker_throughput(setup, storage, s3_env, n)
                results["downloads"] = await downloads(setup, storage, s3_env, seconds)
            finally:
                await throughput.cleanup(setup)
    finally:
        await moto.stop()
    common.log(f"logs in {logdir}")
    return results


def cli() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.s3", description=__doc__)
    parser.add_argument("--requests", type=int, default=500, help="jobs per throughput trial")
    parser.add_argument("--seconds", type=float, default=5.0, help="per download contender")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results = asyncio.run(main(args.requests, args.seconds))
    if args.json:
        common.dump(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
