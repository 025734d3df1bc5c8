"""Publish -> worker -> PostgreSQL row, file on disk, FileReady, email, download."""

from __future__ import annotations

import hashlib
import uuid

import aiohttp
import pytest
from aiohttp import web

from bgworker import settings as settings_mod
from bgworker import storage, store
from bgworker import web as web_app
from bgworker.cli.smtp_sink import SmtpSink, text_body
from tests.handlers import blob_bytes
from tests.helpers import (
    EventLog,
    Publish,
    StartWorker,
    get_row,
    list_outbox,
    must_match,
    stored_bytes,
    stored_keys,
    wait_for_status,
    wait_until,
)

# Every test here runs on both storage backends (on s3, downloads redirect).
pytestmark = pytest.mark.both_storages


async def test_request_becomes_ready_file_with_event(
    settings: settings_mod.Settings,
    db: store.Store,
    publish: Publish,
    start_worker: StartWorker,
    event_log: EventLog,
) -> None:
    await start_worker()
    event = await publish("blob", {"size": 300_000, "seed": 7}, content_type="application/x-blob")
    row = await wait_for_status(db, event.id, "ready")

    expected = blob_bytes(300_000, 7)
    assert row.size_bytes == len(expected)
    assert row.sha256 == hashlib.sha256(expected).hexdigest()
    assert row.attempts == 1 and row.progress == 1
    assert row.expires_at is not None and row.finished_at is not None
    assert await stored_bytes(settings, row) == expected
    # Nothing half-written is left behind.
    async with storage.opened(settings) as files:
        assert (await files.stale(float("inf"))).parts == []
    if settings.storage.backend == "s3":  # a worker on S3 needs no local directory
        assert not settings.storage_dir.exists()

    await wait_until(lambda: any(body["id"] == str(event.id) for _, body in event_log))
    ready = [body for key, body in event_log if key == "file.ready"]
    assert len(ready) == 1
    assert ready[0]["sha256"] == row.sha256 and ready[0]["size"] == row.size_bytes
    assert "/download/" in ready[0]["download_url"]


async def test_email_link_downloads_the_same_bytes(
    settings: settings_mod.Settings,
    db: store.Store,
    publish: Publish,
    start_worker: StartWorker,
    smtp_sink: SmtpSink,
    unused_tcp_port: int,
) -> None:
    settings.web.public_url = f"http://127.0.0.1:{unused_tcp_port}"
    await start_worker()
    event = await publish(
        "login_events",
        {"rows": 2000, "seed": 3},
        filename="logins.csv",
        content_type="text/csv",
        requester={"email": "ann@example.com", "timezone": "Europe/Paris", "language": "fr"},
    )
    [mail] = await smtp_sink.wait_for(1, timeout=30)
    assert mail["To"] == "ann@example.com"
    assert "logins.csv" in mail["Subject"]
    assert mail.get_body(preferencelist=("html",)) is not None
    link = must_match(r"http://\S+/download/\S+", text_body(mail)).group(0)

    async def notified() -> bool:
        row = await db.requests.get_request(event.id)
        return row is not None and row.notified_at is not None

    await wait_until(notified)  # the email was recorded as sent
    row = await get_row(db, event.id)
    assert row.status == "ready"
    runner = web.AppRunner(web_app.create_app(settings))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", unused_tcp_port)
    await site.start()
    try:
        async with aiohttp.ClientSession() as session, session.get(link) as response:
            body = await response.read()
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/csv")
            assert 'filename="logins.csv"' in response.headers["Content-Disposition"]
    finally:
        await runner.cleanup()
    assert hashlib.sha256(body).hexdigest() == row.sha256
    # Language and timezone of the requester reached the handler.
    assert body.startswith(b"horodatage,utilisateur")
    assert b"+01:00," in body


async def test_same_request_published_twice_yields_one_file_and_one_email(
    settings: settings_mod.Settings,
    db: store.Store,
    publish: Publish,
    start_worker: StartWorker,
    smtp_sink: SmtpSink,
    event_log: EventLog,
) -> None:
    w = await start_worker()
    request_id = uuid.uuid4()
    for _ in range(2):
        await publish("blob", {"size": 1000}, id=request_id, requester={"email": "bob@example.com"})
    await wait_for_status(db, request_id, "ready")
    # A third copy after it is ready must also change nothing.
    await publish("blob", {"size": 1000}, id=request_id, requester={"email": "bob@example.com"})
    # All three deliveries were seen: one ran, two were recognised as duplicates.
    await wait_until(lambda: w.outcomes["duplicate"] == 2)
    await smtp_sink.wait_for(1, timeout=30)
    await wait_until(lambda: len(event_log) >= 1)

    async def outbox_done() -> bool:
        rows = await list_outbox(db, request_id)
        return len(rows) == 2 and all(o["status"] == "done" for o in rows)

    await wait_until(outbox_done)

    assert len(await stored_keys(settings)) == 1
    row = await get_row(db, request_id)
    assert row.attempts == 1
    assert w.outcomes["ready"] == 1
    assert len(smtp_sink.messages) == 1
    assert [k for k, _ in event_log] == ["file.ready"]
