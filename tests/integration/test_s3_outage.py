"""The download server when its object store misbehaves, and presigned URLs against the
file's expiry. A store of its own (moto's server) per module, so freezing it (SIGSTOP: the
kernel still accepts connections, nothing answers) disturbs no other test."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import pytest

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.links import tokens
from tests import s3
from tests.helpers import Publish, StartServer, StartWorker, wait_for_status
from tests.integration.downloads import SEED, SIZE, fetch

# Well under the test's own limit: botocore makes 5 attempts of this each.
S3_TIMEOUT = 0.5
# Before the fix botocore waited 60 s per attempt: the request outlived this, the test failed.
CLIENT_LIMIT = 45.0


@pytest.fixture(scope="module")
def own_s3() -> Iterator[s3.S3Server]:
    with s3.moto() as server:
        yield server


@pytest.fixture
def storage_backend() -> str:
    return "s3"


@pytest.fixture
async def storage_settings(own_s3: s3.S3Server) -> settings_mod.StorageSettings:
    config = s3.storage_settings(own_s3, await s3.new_bucket(own_s3))
    config.s3_timeout_seconds = S3_TIMEOUT
    return config


@pytest.mark.parametrize("mode", ["stream", "redirect"])
@pytest.mark.parametrize("path", ["download", "status"])
async def test_a_hung_store_is_a_503_with_retry_after_not_a_hang(
    settings: settings_mod.Settings,
    start_server: StartServer,
    ready: store.RequestRow,
    signer: tokens.Signer,
    own_s3: s3.S3Server,
    mode: str,
    path: str,
) -> None:
    settings.web.download_mode = mode  # type: ignore[assignment]
    server = await start_server()
    url = f"{server}/{path}/{signer.general(ready.id)}"
    with s3.frozen(own_s3):
        status, hdrs, body = await asyncio.wait_for(fetch("GET", url), CLIENT_LIMIT)
    assert status == 503, body[:300]
    assert hdrs["Retry-After"] == "30"
    assert hdrs["Cache-Control"] == "private, no-store"
    assert b'"state": "unavailable"' in body
    # Thawed, the same link works again: nothing was marked gone.
    status, _, _ = await fetch("GET", url)
    assert status == (302 if (mode, path) == ("redirect", "download") else 200)


async def test_a_presigned_url_never_outlives_the_file(
    settings: settings_mod.Settings,
    start_server: StartServer,
    start_worker: StartWorker,
    publish: Publish,
    db: store.Store,
    signer: tokens.Signer,
) -> None:
    settings.web.download_mode = "redirect"
    server = await start_server()
    await start_worker()
    event = await publish("blob", {"size": SIZE, "seed": SEED}, lifetime_seconds=60)
    row = await wait_for_status(db, event.id, "ready")
    assert row.expires_at is not None and settings.storage.presign_seconds > 60
    status, hdrs, _ = await fetch("GET", f"{server}/download/{signer.general(row.id)}")
    assert status == 302
    expires = int(parse_qs(urlsplit(hdrs["Location"]).query)["X-Amz-Expires"][0])
    left = (row.expires_at - datetime.now(UTC)).total_seconds()
    assert 0 < expires <= left + 1


async def test_if_none_match_star_is_a_304_in_stream_mode(
    settings: settings_mod.Settings,
    start_server: StartServer,
    ready: store.RequestRow,
    signer: tokens.Signer,
) -> None:
    # RFC 9110 section 13.1.2: "*" matches any current representation (local files: 304).
    settings.web.download_mode = "stream"
    server = await start_server()
    url = f"{server}/download/{signer.general(ready.id)}"
    status, _, body = await fetch("GET", url, headers={"If-None-Match": "*"})
    assert (status, body) == (304, b"")
