"""The S3 contenders of the download benchmark (issue 10), in the same run as nginx and the
other contenders: the same files, copied into a SeaweedFS on loopback (started by
``tests.s3.seaweedfs``, the same way the tests start it; its data on tmpfs like the local
files), served by ``bgworker serve`` on S3 in two modes:

- ``S3 stream``: the bytes pass through ``serve`` (Range passed on to S3);
- ``S3 redirect``: ``serve`` answers 302 to a presigned URL and the client follows it.

SeaweedFS's CPU is counted with ``serve``'s, as nginx's is counted for offload: a store on
another host would spend it there, but it is part of what serving the bytes costs.

wrk cannot follow a redirect to another host, so the redirect contender's concurrent tests
use ``curl --parallel -L`` (64 transfers at once, one process, batches for as long as wrk
runs) instead; its single-stream tests use ``curl -L``. Only the client differs: the CPU
counted is still the servers'.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bench import common
from bgworker.cli.smtp_sink import free_port
from bgworker.storage import s3 as s3_storage
from tests import s3

CONCURRENCY: Final = 64  # as wrk -c64
BATCH: Final = 512  # transfers per curl process: long enough that its tail is a small part
READ: Final = 8 * 1024 * 1024


@dataclass(frozen=True)
class Contender:
    name: str
    pids: list[int]  # serve and SeaweedFS: whose CPU counts
    rss_pid: int
    urls: dict[str, list[str]]
    follow: bool  # the client follows a redirect


async def _copy(files: s3_storage.S3Storage, storage: Path, keys: list[str]) -> None:
    """The worker's files, into the bucket under the same keys (as a worker on S3 would
    have written them: multipart above one part, through bgworker's own writer)."""
    for key in keys:
        writer = files.writer(key)
        with (storage / key).open("rb") as f:
            while chunk := await asyncio.to_thread(f.read, READ):
                await writer.write(chunk)
        await writer.finish()


@contextlib.asynccontextmanager
async def contenders(
    env: dict[str, str],
    storage: Path,
    keys: list[str],
    links: Callable[[int], dict[str, list[str]]],
    logdir: Path,
) -> AsyncIterator[list[Contender]]:
    """SeaweedFS holding the files, and one ``serve`` per mode in front of it."""
    workdir = Path(tempfile.mkdtemp(prefix="bgw_bench_weed_", dir=common.TMPFS))
    children: list[common.Child] = []
    try:
        with s3.seaweedfs(workdir) as server:
            bucket = await s3.new_bucket(server)
            config = s3.storage_settings(server, bucket)
            files = s3_storage.S3Storage(config)
            await files.open()
            try:
                t0 = time.monotonic()
                await _copy(files, storage, keys)
                common.log(
                    f"s3: {len(keys)} files copied to SeaweedFS in {time.monotonic() - t0:.0f} s"
                )
            finally:
                await files.close()
            s3_env = {
                **env,
                "BGWORKER_STORAGE__BACKEND": "s3",
                "BGWORKER_STORAGE__S3_BUCKET": bucket,
                "BGWORKER_STORAGE__S3_ENDPOINT_URL": server.url,
                "BGWORKER_STORAGE__S3_ACCESS_KEY_ID": s3.ACCESS_KEY,
                "BGWORKER_STORAGE__S3_SECRET_ACCESS_KEY": s3.SECRET_KEY,
                "BGWORKER_STORAGE__S3_PREFIX": config.s3_prefix,
            }
            out: list[Contender] = []
            for name, mode, follow in (
                ("S3 stream", "stream", False),
                ("S3 redirect", "redirect", True),
            ):
                port = free_port()
                child = common.python_child(
                    f"serve-s3-{mode}",
                    ["bgworker", "serve"],
                    {
                        **s3_env,
                        "BGWORKER_WEB__DOWNLOAD_MODE": mode,
                        "BGWORKER_WEB__PORT": str(port),
                    },
                    logdir,
                )
                children.append(child)
                await _wait_healthy(child, port)
                out.append(Contender(name, [child.pid, server.pid], child.pid, links(port), follow))
            try:
                yield out
            finally:  # the servers first, then SeaweedFS (leaving the with)
                for child in children:
                    await child.stop()
    finally:
        for child in children:  # those started before a failure
            await child.stop()
        shutil.rmtree(workdir, ignore_errors=True)


async def _wait_healthy(child: common.Child, port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        child.check_alive()
        proc = await asyncio.create_subprocess_exec(
            "curl", "-sf", "-o", "/dev/null", f"http://127.0.0.1:{port}/healthz"
        )
        if await proc.wait() == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{child.name} did not answer /healthz within {timeout}s")
        await asyncio.sleep(0.2)


async def followed(urls: list[str], seconds: float, pids: list[int]) -> dict[str, float]:
    """``wrk -c64``'s figures, from ``curl --parallel -L`` batches over ``urls`` in turn."""
    cpu0, t0 = common.cpu_seconds(pids), time.monotonic()
    size = requests = 0
    rotation = (urls[i % len(urls)] for i in range(10**9))
    while time.monotonic() - t0 < seconds:
        argv = ["curl", "-sS", "--fail", "-L", "--parallel", "--parallel-max", str(CONCURRENCY)]
        argv += ["-w", "%{size_download}\\n"]
        for _ in range(BATCH):
            argv += [next(rotation), "-o", "/dev/null"]
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"curl --parallel exited {proc.returncode}: {err.decode()[-2000:]}")
        got = [int(line) for line in out.decode().split()]
        size, requests = size + sum(got), requests + len(got)
    elapsed = time.monotonic() - t0
    cpu = common.cpu_seconds(pids) - cpu0
    return {
        "req_per_s": requests / elapsed,
        "mib_per_s": size / 2**20 / elapsed,
        "cpu_s_per_gib": cpu / (size / 2**30) if size else float("nan"),
        "cpu_ms_per_req": cpu * 1000 / requests,
        "non_2xx": 0.0,  # --fail: any would have stopped the run above
    }
