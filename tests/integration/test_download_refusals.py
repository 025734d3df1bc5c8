"""Downloads over real HTTP: every refusal (token, requester, state) and what it reveals."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from bgworker import settings as settings_mod
from bgworker import storage, store
from bgworker.links import tokens
from tests.helpers import Publish, StartServer, wait_for_status
from tests.integration.downloads import (
    IDENTITY,
    assert_refusal,
    fetch,
    new_event,
    signer_in_the_past,
    tamper,
)


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


async def test_link_past_max_age_is_410(
    settings: settings_mod.Settings,
    start_server: StartServer,
    ready: store.RequestRow,
    signer: tokens.Signer,
) -> None:
    max_age = settings.tokens.max_age_seconds = 3600
    server = await start_server()
    skew = int(settings.tokens.clock_skew_seconds)
    fresh_enough = signer_in_the_past(settings.tokens, max_age - 60).general(ready.id)
    expired = signer_in_the_past(settings.tokens, max_age + skew + 60).general(ready.id)
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
    max_age = settings.tokens.max_age_seconds = 3600
    base = await start_server()
    missing = uuid.uuid4()
    old = signer_in_the_past(settings.tokens, max_age + settings.tokens.clock_skew_seconds + 60)
    expired = {rid: old.bound(rid, "alice") for rid in (ready.id, missing)}
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


async def test_valid_token_for_a_request_no_worker_saw_is_waiting(
    server: str, db: store.Store, signer: tokens.Signer
) -> None:
    """Only we sign tokens, so a valid one names a request a producer published: until a
    worker records it, it is waiting in the queue (not "unknown")."""
    rid = uuid.uuid4()
    status, hdrs, body = await fetch("GET", f"{server}/download/{signer.general(rid)}")
    payload = assert_refusal(status, hdrs, body, 409)
    assert "waiting in the queue" in payload["error"]
    status, _, body = await fetch("GET", f"{server}/status/{signer.general(rid)}")
    doc = json.loads(body)
    assert (status, doc["id"], doc["status"], doc["state"]) == (200, str(rid), "queued", "waiting")
    assert "waiting in the queue" in doc["message"]


async def test_request_not_ready_is_409_with_retry_after(
    settings: settings_mod.Settings, server: str, db: store.Store, signer: tokens.Signer
) -> None:
    queued = await new_event(db)
    running = await new_event(db)
    assert await db.requests.record_and_claim(running, 3, "test-worker", 60) is not None
    retrying = await new_event(db)
    claim = await db.requests.record_and_claim(retrying, 3, "test-worker", 60)
    assert claim is not None

    async def no_publish() -> None:
        return None

    assert await db.requests.mark_retrying(
        claim,
        error_class="RuntimeError",
        error="boom",
        next_run_at=datetime.now(UTC) + timedelta(seconds=60),
        publish=no_publish,
    )
    for event, state in ((queued, "queued"), (running, "running"), (retrying, "retrying")):
        assert (await db.requests.get_request(event.id)).status == state  # type: ignore[union-attr]
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


@pytest.mark.both_storages
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
    assert await db.requests.request_cancel(cancelled.id) == "cancelled"
    status, hdrs, body = await fetch("GET", f"{server}/download/{signer.general(cancelled.id)}")
    assert "cancelled" in assert_refusal(status, hdrs, body, 410)["error"]

    # The row says ready but the bytes are gone (cleaned): 410, never a 500 (on S3, in
    # redirect mode: no URL to an object that is not there).
    assert ready.storage_key is not None
    async with storage.opened(settings) as files:
        assert await files.delete(ready.storage_key)
    status, hdrs, body = await fetch("GET", f"{server}/download/{signer.general(ready.id)}")
    assert_refusal(status, hdrs, body, 410)
