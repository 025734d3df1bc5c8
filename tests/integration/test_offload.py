"""download_mode=accel behind a real nginx running the shipped deploy/nginx/bgworker.conf:
bgworker checks the link, nginx sends the bytes (full, Range, conditional), and no link
that bgworker refuses, nor any path a client makes up, reaches the file."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from hypothesis import Phase, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from yarl import URL

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.links import tokens
from bgworker.web import headers as web_headers
from bgworker.web import offload
from tests.handlers import blob_bytes
from tests.helpers import StartServer
from tests.integration.downloads import (
    CONTENT_TYPE,
    SEED,
    SIZE,
    assert_refusal,
    fetch,
    new_event,
    signer_in_the_past,
    tamper,
)
from tests.integration.nginx import nginx_binary, running_nginx

pytestmark = pytest.mark.skipif(
    nginx_binary() is None, reason="nginx is not installed (scripts/test_deps.sh installs it)"
)

BYTES = blob_bytes(SIZE, SEED)
MAX_AGE = 3600
DISPOSITION = (
    "attachment; filename=\"Resume data1.bin\"; filename*=UTF-8''R%C3%A9sum%C3%A9%20data%3B1.bin"
)


@pytest.fixture
async def accel_server(settings: settings_mod.Settings, start_server: StartServer) -> str:
    """``serve`` in accel mode (the in-process app over a real socket)."""
    settings.web.download_mode = "accel"
    settings.tokens.max_age_seconds = MAX_AGE  # read when the server starts
    return await start_server()


@pytest.fixture
async def nginx(
    accel_server: str, settings: settings_mod.Settings, tmp_path: Path
) -> AsyncIterator[str]:
    async with running_nginx(
        tmp_path / "nginx",
        upstream=URL(accel_server).raw_authority,
        prefix=settings.web.accel_prefix,
        files=Path(settings.storage_dir),
    ) as base:
        yield base


async def test_serve_alone_answers_with_the_redirect_and_no_bytes(
    accel_server: str, ready: store.RequestRow, signer: tokens.Signer
) -> None:
    status, hdrs, body = await fetch("GET", f"{accel_server}/download/{signer.general(ready.id)}")
    assert (status, body) == (200, b"")
    assert ready.storage_key is not None
    assert hdrs[offload.ACCEL_REDIRECT] == f"/_bgworker_files/{ready.storage_key}"
    assert hdrs["Content-Type"] == CONTENT_TYPE
    assert hdrs["Content-Disposition"] == DISPOSITION


async def test_full_download_through_nginx(
    nginx: str, ready: store.RequestRow, signer: tokens.Signer
) -> None:
    status, hdrs, body = await fetch("GET", f"{nginx}/download/{signer.general(ready.id)}")
    assert status == 200
    assert hashlib.sha256(body).hexdigest() == ready.sha256
    assert body == BYTES
    assert hdrs["Content-Length"] == str(SIZE)
    assert hdrs["Content-Type"] == CONTENT_TYPE
    assert hdrs["Content-Disposition"] == DISPOSITION
    for name, value in web_headers.SECURITY_HEADERS.items():
        assert hdrs.getall(name) == [value], name
    assert hdrs["Accept-Ranges"] == "bytes"
    assert hdrs["ETag"].startswith('"') and "Last-Modified" in hdrs
    assert offload.ACCEL_REDIRECT not in hdrs  # the internal path never reaches the client

    # HEAD: the same headers, no body.
    status, head, body = await fetch("HEAD", f"{nginx}/download/{signer.general(ready.id)}")
    assert (status, body, head["Content-Length"]) == (200, b"", str(SIZE))
    assert head["Content-Disposition"] == DISPOSITION


async def test_range_and_conditional_requests_through_nginx(
    nginx: str, ready: store.RequestRow, signer: tokens.Signer
) -> None:
    url = f"{nginx}/download/{signer.general(ready.id)}"
    status, hdrs, body = await fetch("GET", url, headers={"Range": "bytes=1000-1999"})
    assert (status, body) == (206, BYTES[1000:2000])
    assert hdrs["Content-Range"] == f"bytes 1000-1999/{SIZE}"
    assert hdrs["Content-Disposition"] == DISPOSITION
    # The last bytes (a resumed download), and a range past the end.
    status, _, body = await fetch("GET", url, headers={"Range": "bytes=-10"})
    assert (status, body) == (206, BYTES[-10:])
    status, hdrs, _ = await fetch("GET", url, headers={"Range": f"bytes={SIZE}-"})
    assert status == 416 and hdrs["Content-Range"] == f"bytes */{SIZE}"

    etag = (await fetch("HEAD", url))[1]["ETag"]
    status, _, body = await fetch("GET", url, headers={"If-None-Match": etag})
    assert (status, body) == (304, b"")
    # If-Range: the range only while the entity tag matches; a stale one gets it all.
    status, _, body = await fetch("GET", url, headers={"Range": "bytes=0-9", "If-Range": etag})
    assert (status, body) == (206, BYTES[:10])
    stale = {"Range": "bytes=0-9", "If-Range": '"0-0"'}
    status, _, body = await fetch("GET", url, headers=stale)
    assert (status, hashlib.sha256(body).hexdigest()) == (200, ready.sha256)


async def test_refused_links_never_reach_the_bytes(
    settings: settings_mod.Settings,
    nginx: str,
    ready: store.RequestRow,
    signer: tokens.Signer,
    db: store.Store,
) -> None:
    expired = signer_in_the_past(settings.tokens, 2 * MAX_AGE).general(ready.id)
    pending = await new_event(db)
    cases = {
        tamper(signer.general(ready.id)): 400,
        "not-a-token": 400,
        expired: 410,
        signer.general(ready.id, status_only=True): 403,
        signer.general(pending.id): 409,
    }
    for token, expected in cases.items():
        for method in ("GET", "HEAD"):
            status, hdrs, body = await fetch(method, f"{nginx}/download/{token}")
            assert status == expected, (token, method)
            assert BYTES[:64] not in body and offload.ACCEL_REDIRECT not in hdrs
            if method == "GET":
                assert_refusal(status, hdrs, body, expected)
    # Revoked: the old link is refused, a link of the new generation works.
    old = signer.general(ready.id)
    generation = await db.links.revoke_links(ready.id)
    assert generation is not None
    status, hdrs, body = await fetch("GET", f"{nginx}/download/{old}")
    assert_refusal(status, hdrs, body, 410)
    status, _, body = await fetch(
        "GET", f"{nginx}/download/{signer.general(ready.id, generation=generation)}"
    )
    assert (status, body == BYTES) == (200, True)


async def test_the_internal_location_is_not_reachable_directly(
    nginx: str, ready: store.RequestRow
) -> None:
    assert ready.storage_key is not None
    key = ready.storage_key
    for path in (
        f"/_bgworker_files/{key}",
        f"/_bgworker_files//{key}",
        f"/%5Fbgworker_files/{key}",
        f"/_bgworker_files/{key.replace('/', '%2F')}",
        f"/download/../_bgworker_files/{key}",
        f"/download/..%2F_bgworker_files%2F{key.replace('/', '%2F')}",
        f"/status/x/../../_bgworker_files/{key}",
    ):
        status, _, body = await _raw_get(nginx, path)
        assert status in {400, 404}, path
        assert BYTES[:64] not in body, path


def _junk_paths(n: int) -> list[str]:
    """Printable ASCII paths made by hypothesis, collected first (its runner is
    synchronous) and then sent over the loop's HTTP client."""
    out: list[str] = []

    @hyp_settings(max_examples=n, database=None, derandomize=True, phases=[Phase.generate])
    @given(st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=80))
    def collect(junk: str) -> None:
        out.append(junk)

    collect()
    return out


async def test_made_up_paths_never_get_the_file(nginx: str, ready: store.RequestRow) -> None:
    # Whatever a client appends to the routes or puts after the internal prefix (dots,
    # escapes, slashes), only a link bgworker checked makes nginx read the file.
    assert ready.storage_key is not None
    for junk in [*_junk_paths(60), f"../_bgworker_files/{ready.storage_key}"]:
        for path in (f"/download/{junk}", f"/_bgworker_files/{junk}", f"/{junk}"):
            status, _, body = await _raw_get(nginx, path)
            assert BYTES[:64] not in body, (path, status)


async def _raw_get(base: str, path: str) -> tuple[int, object, bytes]:
    """GET ``path`` exactly as written: no client-side normalisation of dots or escapes."""
    url = URL(base + path.replace("#", "%23").replace("?", "%3F"), encoded=True)
    async with aiohttp.ClientSession() as session:
        async with session.get(url, allow_redirects=False) as response:
            return response.status, response.headers, await response.read()
