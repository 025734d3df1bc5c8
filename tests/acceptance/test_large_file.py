"""A 200 MiB file built by a `bgworker worker` process and downloaded from `bgworker serve`,
both staying in memory far below the file's size (guarantee 5: bytes are streamed)."""

from __future__ import annotations

import hashlib
import random

import aiohttp
import pytest

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.links import tokens
from tests.acceptance.processes import Spawn
from tests.handlers import CHUNK
from tests.helpers import Publish, wait_for_status

SIZE = 200 * 1024 * 1024
SEED = 2026
# A memory bound, not a timing: a process holding the file (or a large part of it) would
# be above it whatever the machine.
RSS_LIMIT_MIB = 100


def expected_sha256(size: int, seed: int) -> str:
    """What the ``blob`` handler writes, hashed as it is generated (never held whole)."""
    rng = random.Random(seed)
    digest = hashlib.sha256()
    done = 0
    while done < size:
        n = min(CHUNK, size - done)
        digest.update(rng.randbytes(n))
        done += n
    return digest.hexdigest()


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_200_mib_file_is_built_and_served_in_bounded_memory(
    settings: settings_mod.Settings, db: store.Store, publish: Publish, spawn: Spawn
) -> None:
    worker = await spawn("worker", "--concurrency", "1")
    server = await spawn("serve")
    event = await publish(
        "blob", {"size": SIZE, "seed": SEED}, filename="big.bin", content_type="application/x-blob"
    )
    row = await wait_for_status(db, event.id, {"ready", "failed"}, timeout=300)
    assert row.status == "ready", f"{row.status}: {row.last_error}\n{worker.log()}"
    assert row.size_bytes == SIZE
    assert row.sha256 == expected_sha256(SIZE, SEED)

    token = tokens.Signer(settings.tokens).general(event.id)
    digest = hashlib.sha256()
    received = 0
    url = f"http://127.0.0.1:{server.port}/download/{token}"
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Length"] == str(SIZE)
        async for chunk in response.content.iter_chunked(1024 * 1024):
            digest.update(chunk)
            received += len(chunk)
    assert received == SIZE
    assert digest.hexdigest() == row.sha256

    worker_mib = worker.peak_rss_mib()
    server_mib = server.peak_rss_mib()
    figures = (
        f"file {SIZE / 2**20:.0f} MiB; peak RSS (VmHWM): worker {worker_mib:.1f} MiB, "
        f"server {server_mib:.1f} MiB; limit {RSS_LIMIT_MIB} MiB"
    )
    print(figures)
    assert worker_mib < RSS_LIMIT_MIB, figures
    assert server_mib < RSS_LIMIT_MIB, figures

    for proc in (worker, server):
        proc.signal()
    assert await worker.wait_exit() == 0, worker.log()
    assert await server.wait_exit() == 0, server.log()
