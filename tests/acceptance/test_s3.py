"""`bgworker worker` and `serve` processes on S3 storage (moto's server) with no shared
directory: a 200 MiB file in bounded memory, downloaded by redirect and streamed; a worker
killed with -9 mid-upload leaves nothing visible, and `bgworker clean` aborts its upload."""

from __future__ import annotations

import hashlib
import signal

import aiohttp
import pytest

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.links import tokens
from bgworker.storage import s3 as backend
from tests.acceptance.processes import Spawn, run_cli
from tests.acceptance.test_large_file import RSS_LIMIT_MIB, SEED, SIZE, expected_sha256
from tests.helpers import Publish, get_row, settings_env, wait_for_status, wait_until

# The same bound as the local backend's, though botocore and its S3 model cost an idle
# process about 22 MiB (docs/links-and-pages.md "Storage"): measured 94-96 MiB for 200 MiB
# and 1 GiB files.
S3_RSS_LIMIT_MIB = RSS_LIMIT_MIB


def _growth_limit(settings: settings_mod.Settings) -> float:
    # The one part buffer (also the part being sent), the handler's chunks, and slack.
    return 3 * settings.storage.s3_part_size_bytes / 2**20


@pytest.fixture
def storage_backend() -> str:
    return "s3"


async def _download(url: str) -> tuple[int, str]:
    """(bytes, sha256) of a download, redirects followed, never held whole."""
    digest = hashlib.sha256()
    received = 0
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as response:
        assert response.status == 200, await response.text()
        async for chunk in response.content.iter_chunked(1024 * 1024):
            digest.update(chunk)
            received += len(chunk)
    return received, digest.hexdigest()


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_200_mib_file_on_s3_in_bounded_memory_redirected_and_streamed(
    settings: settings_mod.Settings, db: store.Store, publish: Publish, spawn: Spawn
) -> None:
    worker = await spawn("worker", "--concurrency", "1")
    idle_mib = worker.peak_rss_mib()  # botocore and its S3 model: about 22 MiB of it
    event = await publish(
        "blob", {"size": SIZE, "seed": SEED}, filename="big.bin", content_type="application/x-blob"
    )
    row = await wait_for_status(db, event.id, {"ready", "failed"}, timeout=300)
    assert row.status == "ready", f"{row.status}: {row.last_error}\n{worker.log()}"
    assert (row.size_bytes, row.sha256) == (SIZE, expected_sha256(SIZE, SEED))
    assert not settings.storage_dir.exists()  # no local directory anywhere

    token = tokens.Signer(settings.tokens).general(event.id)
    redirect = await spawn("serve")  # auto: redirect, on S3
    stream = await spawn("serve", env={"BGWORKER_WEB__DOWNLOAD_MODE": "stream"})
    for server in (redirect, stream):
        url = f"http://127.0.0.1:{server.port}/download/{token}"
        assert await _download(url) == (SIZE, row.sha256), server.name

    worker_mib = worker.peak_rss_mib()
    stream_mib = stream.peak_rss_mib()
    figures = (
        f"S3: file {SIZE / 2**20:.0f} MiB, part {settings.storage.s3_part_size_bytes / 2**20:.0f}"
        f" MiB; peak RSS (VmHWM): worker {worker_mib:.1f} MiB (idle {idle_mib:.1f} MiB), "
        f"streaming server "
        f"{stream_mib:.1f} MiB, redirecting server {redirect.peak_rss_mib():.1f} MiB; "
        f"limits: growth {_growth_limit(settings):.0f} MiB, total {S3_RSS_LIMIT_MIB} MiB"
    )
    print(figures)
    # Bounded whatever the file's size: what uploading adds to the idle worker is a few
    # parts, never the file.
    assert worker_mib - idle_mib < _growth_limit(settings), figures
    assert worker_mib < S3_RSS_LIMIT_MIB, figures
    assert stream_mib < S3_RSS_LIMIT_MIB, figures
    for proc in (worker, redirect, stream):
        proc.signal()
        assert await proc.wait_exit() == 0, proc.log()


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_kill9_mid_upload_leaves_nothing_visible_and_clean_aborts_the_upload(
    settings: settings_mod.Settings,
    db: store.Store,
    publish: Publish,
    spawn: Spawn,
    s3_files: backend.S3Storage,
) -> None:
    worker = await spawn("worker", "--concurrency", "1")
    event = await publish("blob", {"size": SIZE, "seed": 1})

    async def uploading() -> bool:
        listing = await s3_files.client.list_multipart_uploads(Bucket=s3_files.bucket)
        return bool(listing.get("Uploads"))

    await wait_until(uploading, timeout=60)
    worker.signal(signal.SIGKILL)
    assert await worker.wait_exit() == -9
    listing = await s3_files.client.list_objects_v2(Bucket=s3_files.bucket)
    assert listing.get("Contents", []) == []  # parts were sent, no object exists
    assert (await get_row(db, event.id)).status == "running"  # until its lease runs out

    env = settings_env(settings)
    result = await run_cli("clean", "--orphan-age", "0", env=env)
    assert result.code == 0, result.err
    assert "1 temp part(s)" in result.out, result.out
    assert not await uploading()


async def test_serve_with_a_missing_bucket_says_so_in_one_line(
    settings: settings_mod.Settings,
) -> None:
    env = {**settings_env(settings), "BGWORKER_STORAGE__S3_BUCKET": "no-such-bucket"}
    result = await run_cli("serve", "--port", "1", env=env)
    # 64 (a setting to fix), as for a missing database: the store answered and refused.
    assert result.code == 64, result.err
    [line] = result.err.strip().splitlines()
    assert line.startswith("bgworker serve: S3 bucket 'no-such-bucket' at http://127.0.0.1:")
    assert line.endswith("404, no such bucket (create it, or fix BGWORKER_STORAGE__S3_BUCKET)")


async def test_serve_with_wrong_s3_settings_says_which_in_one_line(
    settings: settings_mod.Settings,
) -> None:
    for change, code, words in (
        ({"BGWORKER_STORAGE__S3_ENDPOINT_URL": "not-a-url"}, 64, "S3_ENDPOINT_URL"),
        ({"BGWORKER_STORAGE__S3_ENDPOINT_URL": "http://127.0.0.1:1"}, 69, "Could not connect"),
    ):
        # Not waited for: a refused endpoint is otherwise waited out at start (60 s, a line
        # per retry: tests/acceptance/test_startup.py).
        env = {**settings_env(settings), **change, "BGWORKER_STARTUP_RETRY_SECONDS": "0"}
        result = await run_cli("serve", "--port", "1", env=env)
        assert result.code == code, (change, result.err)
        [line] = result.err.strip().splitlines()
        assert line.startswith("bgworker serve: ") and words in line, line
