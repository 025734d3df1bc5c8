"""Downloads over real HTTP: file serving, status, health, access log."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import uuid
from typing import Any

import aiohttp
import pytest

from bgworker import settings as settings_mod
from bgworker import store
from bgworker import web as web_app
from bgworker.contract import requester_texts
from bgworker.links import tokens
from bgworker.web import headers as web_headers
from tests.handlers import blob_bytes
from tests.helpers import Publish, StartServer, StartWorker, wait_for_status, wait_until
from tests.integration.downloads import (
    CONTENT_TYPE,
    FILENAME,
    IDENTITY,
    SEED,
    SIZE,
    fetch,
    new_event,
    tamper,
)

# -- serving a ready file ---------------------------------------------------------------


async def test_get_streams_the_whole_file(
    server: str, ready: store.RequestRow, signer: tokens.Signer
) -> None:
    status, hdrs, body = await fetch("GET", f"{server}/download/{signer.general(ready.id)}")
    assert status == 200
    assert hashlib.sha256(body).hexdigest() == ready.sha256
    assert body == blob_bytes(SIZE, SEED)
    assert hdrs["Content-Length"] == str(SIZE) == str(ready.size_bytes)
    assert hdrs["Content-Type"] == CONTENT_TYPE
    assert hdrs["Content-Disposition"] == (
        'attachment; filename="Resume data1.bin"; '
        "filename*=UTF-8''R%C3%A9sum%C3%A9%20data%3B1.bin"
    )
    for name, value in web_headers.SECURITY_HEADERS.items():
        assert hdrs[name] == value
    assert hdrs["ETag"].startswith('"') and not hdrs["ETag"].startswith("W/")


async def test_bound_token_serves_its_requester(
    settings: settings_mod.Settings,
    start_server: StartServer,
    ready: store.RequestRow,
    signer: tokens.Signer,
) -> None:
    settings.web.identity_header = IDENTITY
    base = await start_server()
    url = f"{base}/download/{signer.bound(ready.id, 'alice')}"
    status, _, body = await fetch("GET", url, headers={IDENTITY: "alice"})
    assert status == 200
    assert hashlib.sha256(body).hexdigest() == ready.sha256


async def test_identity_callable(
    start_server: StartServer, ready: store.RequestRow, signer: tokens.Signer
) -> None:
    async def identify(request: Any) -> str | None:
        return "alice" if request.cookies.get("session") == "s3cret" else None

    base = await start_server(identity=identify)
    url = f"{base}/download/{signer.bound(ready.id, 'alice')}"
    assert (await fetch("GET", url, cookies={"session": "s3cret"}))[0] == 200
    assert (await fetch("GET", url, cookies={"session": "guess"}))[0] == 403


async def test_head_sends_headers_and_no_body(
    server: str, ready: store.RequestRow, signer: tokens.Signer
) -> None:
    host, port = server.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        path = f"/download/{signer.general(ready.id)}"
        writer.write(f"HEAD {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        async with asyncio.timeout(30):
            raw = await reader.read()  # until the server closes: everything it sent
    finally:
        writer.close()
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0] == "HTTP/1.1 200 OK"
    hdrs = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert rest == b""  # no body on the wire
    assert hdrs["content-length"] == str(SIZE)
    assert hdrs["content-type"] == CONTENT_TYPE
    assert hdrs["content-disposition"].startswith('attachment; filename="Resume data1.bin"')
    assert hdrs["cache-control"] == "private, no-store"
    assert hdrs["referrer-policy"] == "no-referrer"
    assert hdrs["x-content-type-options"] == "nosniff"


async def test_range_requests(server: str, ready: store.RequestRow, signer: tokens.Signer) -> None:
    url = f"{server}/download/{signer.general(ready.id)}"
    data = blob_bytes(SIZE, SEED)

    status, hdrs, body = await fetch("GET", url, headers={"Range": "bytes=1000-1999"})
    assert status == 206
    assert body == data[1000:2000]
    assert hdrs["Content-Range"] == f"bytes 1000-1999/{SIZE}"
    assert hdrs["Content-Length"] == "1000"
    assert hdrs["Cache-Control"] == "private, no-store"

    status, hdrs, body = await fetch("GET", url, headers={"Range": "bytes=-17"})
    assert (status, body) == (206, data[-17:])

    status, _, body = await fetch("GET", url, headers={"Range": f"bytes={SIZE - 5}-"})
    assert (status, body) == (206, data[-5:])

    status, hdrs, body = await fetch("GET", url, headers={"Range": f"bytes={SIZE}-"})
    assert status == 416
    assert hdrs["Content-Range"] == f"bytes */{SIZE}"
    assert data[:16] not in body


async def test_ranges_the_rfc_says_to_ignore_or_refuse(
    server: str, ready: store.RequestRow, signer: tokens.Signer
) -> None:
    """RFC 9110 section 14: Range only on GET, an unknown unit ignored, and a zero-length
    suffix unsatisfiable. Also collected by test_s3_downloads: both backends agree."""
    url = f"{server}/download/{signer.general(ready.id)}"
    status, hdrs, body = await fetch("HEAD", url, headers={"Range": "bytes=0-9"})
    assert (status, hdrs["Content-Length"], body) == (200, str(SIZE), b"")
    assert "Content-Range" not in hdrs
    status, _, body = await fetch("GET", url, headers={"Range": "items=0-9"})
    assert (status, body) == (200, blob_bytes(SIZE, SEED))
    status, hdrs, body = await fetch("GET", url, headers={"Range": "bytes=-0"})
    assert status == 416 and hdrs["Content-Range"] == f"bytes */{SIZE}"
    assert blob_bytes(SIZE, SEED)[:16] not in body


async def test_conditional_requests(
    server: str, ready: store.RequestRow, signer: tokens.Signer
) -> None:
    url = f"{server}/download/{signer.general(ready.id)}"
    _, hdrs, _ = await fetch("GET", url)
    etag = hdrs["ETag"]

    status, _, body = await fetch("GET", url, headers={"If-None-Match": etag})
    assert (status, body) == (304, b"")
    # If-Range with the current validator honours the range; with a stale one, whole file.
    status, _, body = await fetch("GET", url, headers={"Range": "bytes=0-9", "If-Range": etag})
    assert (status, len(body)) == (206, 10)
    status, _, body = await fetch("GET", url, headers={"Range": "bytes=0-9", "If-Range": '"old"'})
    assert (status, len(body)) == (200, SIZE)
    # If-Range needs a strong match: a weak tag never qualifies for a partial response.
    weak = {"Range": "bytes=0-9", "If-Range": f"W/{etag}"}
    status, _, body = await fetch("GET", url, headers=weak)
    assert (status, body) == (200, blob_bytes(SIZE, SEED))


async def test_one_engine_answers_range_and_conditionals_on_every_backend(
    server: str, ready: store.RequestRow, signer: tokens.Signer
) -> None:
    """web/ranges decides for every backend (collected by test_s3_downloads too): before it,
    a reversed range was a 416 on local files and a 200 on S3, a weak If-None-Match and a
    HEAD's were a 304 on local files and a 200 on S3."""
    url = f"{server}/download/{signer.general(ready.id)}"
    data = blob_bytes(SIZE, SEED)
    _, hdrs, _ = await fetch("GET", url)
    etag = hdrs["ETag"]
    for value in ("bytes=0-1,5-9", "bytes=9-1", "bytes=abc"):
        status, hdrs, body = await fetch("GET", url, headers={"Range": value})
        assert (status, body) == (200, data), value
        assert "Content-Range" not in hdrs
    for method, tag in (("GET", f"W/{etag}"), ("HEAD", etag), ("GET", f'"x", {etag}')):
        status, hdrs, body = await fetch(method, url, headers={"If-None-Match": tag})
        assert (status, body, hdrs["ETag"]) == (304, b"", etag), (method, tag)
    status, _, body = await fetch("GET", url, headers={"If-None-Match": '"x"'})
    assert (status, body) == (200, data)
    dated = {"Range": "bytes=0-9", "If-Range": "Wed, 21 Oct 2099 07:28:00 GMT"}
    status, _, body = await fetch("GET", url, headers=dated)
    assert (status, body) == (200, data)  # a date is not our ETag: all of it
    status, hdrs, body = await fetch("GET", url, headers={"Range": f"bytes=10-{SIZE * 2}"})
    assert (status, body, hdrs["Content-Range"]) == (206, data[10:], f"bytes 10-{SIZE - 1}/{SIZE}")
    status, hdrs, body = await fetch("GET", url, headers={"Range": f"Bytes=-{SIZE * 2}"})
    assert (status, body, hdrs["Content-Range"]) == (206, data, f"bytes 0-{SIZE - 1}/{SIZE}")


# Written out, not read from bgworker.web.headers: a change to what the server sends must
# fail here. Cache-Control: the body is the requester's data, never kept by a shared cache
# (RFC 9111 section 5.2.2.3/5.2.2.7); Referrer-Policy: the URL carries the token.
DOWNLOAD_SECURITY_HEADERS = {
    "Cache-Control": "private, no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


async def test_security_headers(
    server: str, db: store.Store, ready: store.RequestRow, signer: tokens.Signer
) -> None:
    """Every kind of answer the download server gives carries them, as sent over HTTP: the
    file (whole, HEAD, a range, not modified, a range it cannot satisfy), the status page,
    and a refusal of each kind."""
    token = signer.general(ready.id)
    _, first, _ = await fetch("GET", f"{server}/download/{token}")
    queued = await new_event(db)
    cases = [
        ("GET", f"/download/{token}", {}, 200),
        ("HEAD", f"/download/{token}", {}, 200),
        ("GET", f"/download/{token}", {"Range": "bytes=0-9"}, 206),
        ("GET", f"/download/{token}", {"If-None-Match": first["ETag"]}, 304),
        ("GET", f"/download/{token}", {"Range": f"bytes={SIZE}-"}, 416),
        ("GET", f"/status/{token}", {}, 200),
        ("GET", f"/download/{tamper(token)}", {}, 400),
        ("GET", f"/download/{signer.bound(ready.id, 'alice')}", {}, 403),
        ("GET", f"/status/{signer.general(uuid.uuid4())}", {}, 200),  # waiting in the queue
        ("GET", f"/download/{signer.general(ready.id, generation=1)}", {}, 410),  # revoked
        ("GET", f"/download/{signer.general(queued.id)}", {}, 409),
    ]
    for method, path, request_headers, expected in cases:
        status, hdrs, _ = await fetch(method, server + path, headers=request_headers)
        assert status == expected, (method, path, request_headers)
        sent = {name: hdrs.get(name) for name in DOWNLOAD_SECURITY_HEADERS}
        assert sent == DOWNLOAD_SECURITY_HEADERS, (status, method, path)


# -- status and health ----------------------------------------------------------------


async def test_status_json(
    settings: settings_mod.Settings,
    start_server: StartServer,
    db: store.Store,
    ready: store.RequestRow,
    signer: tokens.Signer,
) -> None:
    settings.web.identity_header = IDENTITY
    base = await start_server()
    status, hdrs, body = await fetch("GET", f"{base}/status/{signer.general(ready.id)}")
    assert status == 200
    assert hdrs["Content-Type"].startswith("application/json")
    assert hdrs["Cache-Control"] == "private, no-store"
    doc = json.loads(body)
    assert doc == {
        "id": str(ready.id),
        "status": "ready",
        "state": "ready",
        "message": "the file is ready",
        "file_type": "blob",
        "filename": FILENAME,
        "progress": 1,
        "percent": 100.0,
        "progress_done": ready.progress_done,
        "progress_total": ready.progress_total,
        "attempts": 1,
        "size": SIZE,
        "sha256": ready.sha256,
        "reused": False,
        "requested_at": ready.requested_at.isoformat(),
        "finished_at": ready.finished_at.isoformat() if ready.finished_at else None,
        "expires_at": ready.expires_at.isoformat() if ready.expires_at else None,
        "error": None,
    }

    queued = await new_event(db)
    url = f"{base}/status/{signer.bound(queued.id, 'alice')}"
    doc = json.loads((await fetch("GET", url, headers={IDENTITY: "alice"}))[2])
    assert (doc["status"], doc["size"], doc["sha256"]) == ("queued", None, None)
    assert (await fetch("GET", url, headers={IDENTITY: "bob"}))[0] == 403


async def test_status_of_a_failed_request_says_so_without_the_exception(
    server: str, db: store.Store, publish: Publish, start_worker: StartWorker, signer: tokens.Signer
) -> None:
    await start_worker()
    failed = await publish("permanent", {})
    row = await wait_for_status(db, failed.id, "failed")
    status, _, body = await fetch("GET", f"{server}/status/{signer.general(failed.id)}")
    assert status == 200
    doc = json.loads(body)
    assert (doc["status"], doc["state"]) == ("failed", "failed")
    # The requester gets plain words; the exception text stays with the row (operators).
    assert doc["error"] == requester_texts.failure(row.failure_reason)
    assert "criteria make no sense" not in body.decode()
    assert row.last_error is not None and "criteria make no sense" in row.last_error


async def test_healthz(server: str, start_server: StartServer, database_url: str) -> None:
    status, _, body = await fetch("GET", f"{server}/healthz")
    assert (status, json.loads(body)) == (200, {"status": "ok", "pid": os.getpid()})

    # With the database unreachable, the server says so instead of claiming health.
    pool = await store.create_pool(database_url)
    base = await start_server(db=store.Store(pool))
    await pool.close()
    status, _, body = await fetch("GET", f"{base}/healthz")
    assert status == 503
    assert json.loads(body)["status"] == "unhealthy"


# -- the access log -------------------------------------------------------------------


async def test_access_log_never_contains_a_token(
    settings: settings_mod.Settings,
    unused_tcp_port: int,
    ready: store.RequestRow,
    signer: tokens.Signer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Through ``serve`` itself, the way the CLI runs the server."""
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    settings.web.host, settings.web.port = "127.0.0.1", unused_tcp_port
    settings.web.identity_header = IDENTITY
    base = f"http://127.0.0.1:{unused_tcp_port}"
    stop = asyncio.Event()
    task = asyncio.create_task(web_app.serve(settings, stop))

    async def up() -> bool:
        if task.done():
            task.result()
        try:
            return (await fetch("GET", f"{base}/healthz"))[0] == 200
        except aiohttp.ClientConnectionError:
            return False

    try:
        await wait_until(up)
        general, bound = signer.general(ready.id), signer.bound(ready.id, "alice")
        secrets = [general, bound, tamper(general), "u.some-made-up-token"]
        requests = [
            ("GET", f"/download/{general}", {}),
            ("HEAD", f"/download/{general}", {}),
            ("GET", f"/download/{general}?a=b", {"Range": "bytes=0-1"}),
            ("GET", f"/download/{bound}", {IDENTITY: "bob"}),
            ("GET", f"/download/{tamper(general)}", {}),
            ("GET", f"/status/{bound}", {IDENTITY: "alice"}),
            ("GET", "/download/u.some-made-up-token", {}),
            ("GET", f"/download/{general}/extra", {}),
        ]
        for method, path, hdrs in requests:
            await fetch(method, base + path, headers=hdrs)

        def access() -> list[str]:
            return [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]

        # Logged after each response is sent: wait until all are in.
        await wait_until(lambda: len([m for m in access() if "healthz" not in m]) >= len(requests))
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)

    lines = [m for m in access() if "healthz" not in m]
    assert any('"GET /download/<token>' in m and " 200 " in m for m in lines)
    assert any('"HEAD /download/<token>' in m for m in lines)
    assert any('"GET /status/<token>' in m for m in lines)
    everything = "\n".join(r.getMessage() for r in caplog.records) + caplog.text
    for secret in secrets:
        assert secret not in everything
        # Not even the signature part on its own.
        assert secret.rsplit(".", 1)[-1] not in everything
