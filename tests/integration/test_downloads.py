"""Downloads over real HTTP: every token outcome, file serving, status, health, access log."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import itsdangerous
import pytest
from multidict import CIMultiDict

from bgworker import events, storage, store, tokens
from bgworker import settings as settings_mod
from bgworker import web as web_app
from bgworker.web import headers as web_headers
from tests.handlers import blob_bytes
from tests.helpers import Publish, StartServer, StartWorker, wait_for_status, wait_until

SIZE = 300_001
SEED = 5
FILENAME = "Résumé data;1.bin"
CONTENT_TYPE = "application/x-blob"
IDENTITY = "X-Auth-User"


@pytest.fixture
def signer(settings: settings_mod.Settings) -> tokens.Signer:
    return tokens.Signer(settings.tokens)


@pytest.fixture
async def ready(db: store.Store, publish: Publish, start_worker: StartWorker) -> store.RequestRow:
    """A request made ready by a real worker, owned by requester ``alice``."""
    await start_worker()
    event = await publish(
        "blob",
        {"size": SIZE, "seed": SEED},
        filename=FILENAME,
        content_type=CONTENT_TYPE,
        requester={"id": "alice"},
    )
    return await wait_for_status(db, event.id, "ready")


@contextmanager
def signed_in_the_past(seconds: int) -> Iterator[None]:
    """Tokens signed inside this block carry a timestamp ``seconds`` old."""
    with pytest.MonkeyPatch.context() as m:
        m.setattr(
            itsdangerous.timed.TimestampSigner,
            "get_timestamp",
            lambda self: int(time.time()) - seconds,
        )
        yield


def tamper(token: str) -> str:
    # A character in the middle of the signature: the last one only carries padding bits.
    i = len(token) - 10
    return token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1 :]


Headers = CIMultiDict[str]


async def fetch(method: str, url: str, **kwargs: Any) -> tuple[int, Headers, bytes]:
    async with aiohttp.ClientSession() as session:
        async with session.request(method, url, allow_redirects=False, **kwargs) as response:
            return response.status, CIMultiDict(response.headers), await response.read()


async def new_event(db: store.Store, requester_id: str | None = "alice") -> events.FileRequested:
    event = events.FileRequested(
        id=uuid.uuid4(),
        file_type="blob",
        filename="pending.bin",
        requester={"id": requester_id} if requester_id else None,
    )
    await db.insert_request(event, max_attempts=3)
    return event


def assert_refusal(status: int, hdrs: Headers, body: bytes, expected: int) -> dict[str, Any]:
    assert status == expected
    assert hdrs["Content-Type"].startswith("application/json")
    for name, value in web_headers.SECURITY_HEADERS.items():
        assert hdrs[name] == value
    assert "Content-Disposition" not in hdrs
    payload: dict[str, Any] = json.loads(body)
    assert payload["status"] == expected and payload["error"]
    return payload


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


# -- refusals -------------------------------------------------------------------------


async def test_tampered_token_is_400(
    server: str, ready: store.RequestRow, signer: tokens.Signer
) -> None:
    for token in (tamper(signer.general(ready.id)), tamper(signer.bound(ready.id, "alice")), "x"):
        status, hdrs, body = await fetch("GET", f"{server}/download/{token}")
        assert_refusal(status, hdrs, body, 400)


async def test_token_signed_with_another_key_is_400(
    settings: settings_mod.Settings, server: str, ready: store.RequestRow
) -> None:
    other = tokens.Signer(settings_mod.TokenSettings(secret_keys=["somebody-elses-key"]))
    status, hdrs, body = await fetch("GET", f"{server}/download/{other.general(ready.id)}")
    assert_refusal(status, hdrs, body, 400)


async def test_expired_link_is_410(
    settings: settings_mod.Settings, server: str, ready: store.RequestRow, signer: tokens.Signer
) -> None:
    max_age = settings.tokens.max_age_seconds
    with signed_in_the_past(max_age - 60):
        fresh_enough = signer.general(ready.id)
    with signed_in_the_past(max_age + 60):
        expired = signer.general(ready.id)
    assert (await fetch("GET", f"{server}/download/{fresh_enough}"))[0] == 200
    status, hdrs, body = await fetch("GET", f"{server}/download/{expired}")
    payload = assert_refusal(status, hdrs, body, 410)
    assert "expired" in payload["error"]
    # The file itself is still there and not expired: only the link is too old.
    assert ready.expires_at is not None and ready.expires_at > datetime.now(UTC)


async def test_bound_token_refused_to_another_user_and_to_nobody(
    settings: settings_mod.Settings,
    start_server: StartServer,
    ready: store.RequestRow,
    signer: tokens.Signer,
) -> None:
    settings.web.identity_header = IDENTITY
    base = await start_server()
    url = f"{base}/download/{signer.bound(ready.id, 'alice')}"
    assert ready.sha256 is not None  # narrows the type: a ready row has its digest
    for caller in ({IDENTITY: "bob"}, {}, {IDENTITY: ""}, {IDENTITY: "Alice"}):
        status, hdrs, body = await fetch("GET", url, headers=caller)
        assert_refusal(status, hdrs, body, 403)
        assert body.find(ready.sha256.encode()) == -1


async def test_bound_token_without_identity_configured_is_403(
    server: str, ready: store.RequestRow, signer: tokens.Signer
) -> None:
    # No identity header configured: a header a client makes up is not trusted.
    url = f"{server}/download/{signer.bound(ready.id, 'alice')}"
    status, hdrs, body = await fetch("GET", url, headers={IDENTITY: "alice"})
    assert_refusal(status, hdrs, body, 403)


async def test_refusals_do_not_reveal_whether_a_request_exists(
    settings: settings_mod.Settings,
    start_server: StartServer,
    ready: store.RequestRow,
    signer: tokens.Signer,
) -> None:
    """The same answer, byte for byte, for another user's real request and for an id that
    does not exist, for every kind of refusal that happens before the row is read."""
    settings.web.identity_header = IDENTITY
    base = await start_server()
    missing = uuid.uuid4()
    max_age = settings.tokens.max_age_seconds
    with signed_in_the_past(max_age + 60):
        expired = {rid: signer.bound(rid, "alice") for rid in (ready.id, missing)}
    cases = {
        "foreign": ({IDENTITY: "bob"}, {rid: signer.bound(rid, "alice") for rid in expired}),
        "anonymous": ({}, {rid: signer.bound(rid, "alice") for rid in expired}),
        "tampered": ({IDENTITY: "alice"}, {r: tamper(signer.bound(r, "alice")) for r in expired}),
        "expired": ({IDENTITY: "bob"}, expired),
    }
    for path in ("download", "status"):
        for name, (caller, by_id) in cases.items():
            real = await fetch("GET", f"{base}/{path}/{by_id[ready.id]}", headers=caller)
            ghost = await fetch("GET", f"{base}/{path}/{by_id[missing]}", headers=caller)
            assert real[0] in {400, 403, 410}, name
            assert real[0] == ghost[0], name
            assert real[2] == ghost[2], name
            assert sorted((k, v) for k, v in real[1].items() if k != "Date") == sorted(
                (k, v) for k, v in ghost[1].items() if k != "Date"
            ), name


async def test_valid_token_for_unknown_id_is_404(
    server: str, db: store.Store, signer: tokens.Signer
) -> None:
    for path in ("download", "status"):
        status, hdrs, body = await fetch("GET", f"{server}/{path}/{signer.general(uuid.uuid4())}")
        assert_refusal(status, hdrs, body, 404)


async def test_request_not_ready_is_409_with_retry_after(
    settings: settings_mod.Settings, server: str, db: store.Store, signer: tokens.Signer
) -> None:
    queued = await new_event(db)
    running = await new_event(db)
    assert await db.record_and_claim(running, 3, "test-worker", 60) is not None
    retrying = await new_event(db)
    claim = await db.record_and_claim(retrying, 3, "test-worker", 60)
    assert claim is not None

    async def no_publish() -> None:
        return None

    assert await db.mark_retrying(
        claim,
        error_class="RuntimeError",
        error="boom",
        next_run_at=datetime.now(UTC) + timedelta(seconds=60),
        publish=no_publish,
    )
    for event, state in ((queued, "queued"), (running, "running"), (retrying, "retrying")):
        assert (await db.get_request(event.id)).status == state  # type: ignore[union-attr]
        status, hdrs, body = await fetch("GET", f"{server}/download/{signer.general(event.id)}")
        payload = assert_refusal(status, hdrs, body, 409)
        assert int(hdrs["Retry-After"]) > 0
        assert state in payload["error"]


async def test_file_past_its_expiry_is_410(
    server: str, db: store.Store, ready: store.RequestRow, signer: tokens.Signer
) -> None:
    url = f"{server}/download/{signer.general(ready.id)}"
    assert (await fetch("GET", url))[0] == 200
    await db.pool.execute(
        "UPDATE bgworker_requests SET expires_at = now() - interval '1 second' WHERE id = $1",
        ready.id,
    )
    status, hdrs, body = await fetch("GET", url)
    payload = assert_refusal(status, hdrs, body, 410)
    assert "expired" in payload["error"]
    # Range requests are refused the same way: no byte of an expired file.
    status, hdrs, body = await fetch("GET", url, headers={"Range": "bytes=0-9"})
    assert_refusal(status, hdrs, body, 410)


async def test_failed_cancelled_and_vanished_files_are_410(
    settings: settings_mod.Settings,
    server: str,
    db: store.Store,
    publish: Publish,
    ready: store.RequestRow,
    signer: tokens.Signer,
) -> None:
    failed = await publish("permanent", {})
    await wait_for_status(db, failed.id, "failed")
    status, hdrs, body = await fetch("GET", f"{server}/download/{signer.general(failed.id)}")
    assert "failed" in assert_refusal(status, hdrs, body, 410)["error"]

    cancelled = await new_event(db)
    assert await db.request_cancel(cancelled.id) == "cancelled"
    status, hdrs, body = await fetch("GET", f"{server}/download/{signer.general(cancelled.id)}")
    assert "cancelled" in assert_refusal(status, hdrs, body, 410)["error"]

    # The row says ready but the bytes are gone (cleaned): 410, never a 500.
    assert ready.storage_key is not None
    assert await storage.LocalStorage(settings.storage_dir).delete(ready.storage_key)
    status, hdrs, body = await fetch("GET", f"{server}/download/{signer.general(ready.id)}")
    assert_refusal(status, hdrs, body, 410)


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
        "file_type": "blob",
        "filename": FILENAME,
        "progress": 1,
        "attempts": 1,
        "size": SIZE,
        "sha256": ready.sha256,
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


async def test_status_of_a_failed_request_carries_the_error(
    server: str, db: store.Store, publish: Publish, start_worker: StartWorker, signer: tokens.Signer
) -> None:
    await start_worker()
    failed = await publish("permanent", {})
    await wait_for_status(db, failed.id, "failed")
    status, _, body = await fetch("GET", f"{server}/status/{signer.general(failed.id)}")
    assert status == 200
    doc = json.loads(body)
    assert doc["status"] == "failed"
    assert "criteria make no sense" in doc["error"]


async def test_healthz(server: str, start_server: StartServer, database_url: str) -> None:
    status, _, body = await fetch("GET", f"{server}/healthz")
    assert (status, json.loads(body)) == (200, {"status": "ok"})

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
