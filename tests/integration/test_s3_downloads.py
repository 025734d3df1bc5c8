"""Downloads of files kept in S3 (moto's server): the download tests of local storage run
again on S3 in stream mode (Range passed through, 206/416, ETag, HEAD, security headers),
and the redirect mode answers with a presigned URL that keeps the name and type."""

from __future__ import annotations

import asyncio
import hashlib
from urllib.parse import SplitResult, parse_qs, urlsplit

import pytest

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.links import tokens
from tests.handlers import blob_bytes
from tests.helpers import Publish, StartServer, stored_keys, wait_for_status, wait_until
from tests.integration.downloads import CONTENT_TYPE, SEED, SIZE, assert_refusal, fetch, tamper

# The local tests, collected again here with the fixtures below: the same assertions.
from tests.integration.test_downloads import (  # noqa: F401
    test_conditional_requests,
    test_get_streams_the_whole_file,
    test_head_sends_headers_and_no_body,
    test_one_engine_answers_range_and_conditionals_on_every_backend,
    test_range_requests,
    test_ranges_the_rfc_says_to_ignore_or_refuse,
    test_security_headers,
)

DISPOSITION = (
    "attachment; filename=\"Resume data1.bin\"; filename*=UTF-8''R%C3%A9sum%C3%A9%20data%3B1.bin"
)


@pytest.fixture
def storage_backend() -> str:
    return "s3"


@pytest.fixture
def settings(settings: settings_mod.Settings) -> settings_mod.Settings:
    """Stream mode for the tests collected from test_downloads; the redirect tests below
    start their own server in redirect mode."""
    settings.web.download_mode = "stream"
    return settings


@pytest.fixture
async def redirect_server(settings: settings_mod.Settings, start_server: StartServer) -> str:
    settings.web.download_mode = "auto"  # auto: redirect, on S3
    return await start_server()


async def test_redirect_to_a_presigned_url_that_keeps_name_and_type(
    settings: settings_mod.Settings,
    redirect_server: str,
    ready: store.RequestRow,
    signer: tokens.Signer,
) -> None:
    status, hdrs, body = await fetch(
        "GET", f"{redirect_server}/download/{signer.general(ready.id)}"
    )
    assert status == 302 and body == b""
    assert hdrs["Cache-Control"] == "private, no-store"  # a cached redirect would outlive it
    assert hdrs["Referrer-Policy"] == "no-referrer"
    location = hdrs["Location"]
    query = parse_qs(urlsplit(location).query)
    assert query["response-content-disposition"] == [DISPOSITION]
    assert query["response-content-type"] == [CONTENT_TYPE]
    assert query["X-Amz-Expires"] == [str(settings.storage.presign_seconds)]
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert urlsplit(location).path.endswith(str(ready.storage_key))
    # Following it, the object store sends the bytes with the name and type we chose.
    status, got, data = await fetch("GET", location)
    assert status == 200
    assert hashlib.sha256(data).hexdigest() == ready.sha256
    assert got["Content-Disposition"] == DISPOSITION
    assert got["Content-Type"] == CONTENT_TYPE


async def test_head_in_redirect_mode_is_answered_by_the_server(
    redirect_server: str, ready: store.RequestRow, signer: tokens.Signer
) -> None:
    # A URL presigned for GET does not answer HEAD: the server answers from the row.
    status, hdrs, body = await fetch(
        "HEAD", f"{redirect_server}/download/{signer.general(ready.id)}"
    )
    assert (status, body) == (200, b"")
    assert hdrs["Content-Length"] == str(SIZE)
    assert hdrs["Content-Disposition"] == DISPOSITION
    assert "Location" not in hdrs


async def test_a_refused_token_never_gets_a_presigned_url(
    redirect_server: str, ready: store.RequestRow, signer: tokens.Signer
) -> None:
    for token, expected in (
        (tamper(signer.general(ready.id)), 400),
        (signer.bound(ready.id, "alice"), 403),  # nobody identified as alice
        (signer.general(ready.id, generation=1), 410),  # revoked
    ):
        status, hdrs, body = await fetch("GET", f"{redirect_server}/download/{token}")
        assert "Location" not in hdrs
        assert_refusal(status, hdrs, body, expected)


async def test_an_object_deleted_behind_the_row_is_gone_not_an_error(
    settings: settings_mod.Settings,
    server: str,
    ready: store.RequestRow,
    signer: tokens.Signer,
) -> None:
    from bgworker import storage

    assert ready.storage_key is not None
    async with storage.opened(settings) as files:
        assert await files.delete(ready.storage_key)
        assert not await files.delete(ready.storage_key)  # a second delete finds nothing
    assert await stored_keys(settings) == []
    status, hdrs, body = await fetch("GET", f"{server}/download/{signer.general(ready.id)}")
    assert assert_refusal(status, hdrs, body, 410)["state"] == "gone"


async def test_stream_ignores_a_multi_range_and_sends_the_whole_file(
    server: str, ready: store.RequestRow, signer: tokens.Signer
) -> None:
    url = f"{server}/download/{signer.general(ready.id)}"
    status, _, body = await fetch("GET", url, headers={"Range": "bytes=0-1,5-9"})
    assert (status, body) == (200, blob_bytes(SIZE, SEED))
    status, _, body = await fetch("GET", url, headers={"Range": "items=0-9"})
    assert (status, len(body)) == (200, SIZE)


async def test_odd_ranges_are_answered_never_an_error(
    server: str, ready: store.RequestRow, signer: tokens.Signer
) -> None:
    url = f"{server}/download/{signer.general(ready.id)}"
    for value in ("bytes=9-1", f"bytes={SIZE * 9}-", "bytes=0-" + "9" * 19, "bytes=-0"):
        status, hdrs, body = await fetch("GET", url, headers={"Range": value})
        assert status in {200, 206, 416}, (value, status, body[:200])
        if status == 416:
            assert hdrs["Content-Range"] == f"bytes */{SIZE}"


async def _download_until_cut(url: SplitResult, size: int, done: list[int]) -> None:
    """As one wrk connection: the same download again and again on one connection, until
    cancelled, then it hangs up (mid-body, or before the next answer's headers)."""
    assert url.hostname is not None and url.port is not None
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    get = f"GET {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\n\r\n".encode()
    try:
        while True:
            writer.write(get)
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
            await reader.readexactly(size)
            done.append(size)
    finally:
        writer.close()


async def test_clients_that_hang_up_never_use_up_the_connections_to_s3(
    server: str,
    ready: store.RequestRow,
    signer: tokens.Signer,
    publish: Publish,
    db: store.Store,
) -> None:
    size = 10 * 1024 * 1024
    big = await publish("blob", {"size": size, "seed": 1})
    big_url = urlsplit(f"{server}/download/{signer.general(big.id)}")
    await wait_for_status(db, big.id, "ready")
    done: list[int] = []
    # Many more clients than botocore's pool (10 connections): a body left open holds one.
    clients = [asyncio.create_task(_download_until_cut(big_url, size, done)) for _ in range(48)]
    await wait_until(lambda: len(done) >= 48)
    for client in clients:  # all hang up at once, as wrk does at the end of its run
        client.cancel()
    await asyncio.gather(*clients, return_exceptions=True)
    async with asyncio.timeout(30):  # with the pool used up, downloads wait, then fail
        status, _, body = await fetch("GET", f"{server}/download/{signer.general(ready.id)}")
    assert (status, body) == (200, blob_bytes(SIZE, SEED))
