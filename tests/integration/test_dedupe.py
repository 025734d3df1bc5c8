"""Dedupe by content: identical requests of a file type registered with dedupe_seconds share
one build (real RabbitMQ, PostgreSQL, SMTP, downloads over a socket)."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bgworker import settings as settings_mod
from bgworker import storage, store
from bgworker.cli.smtp_sink import SmtpSink
from bgworker.contract import events
from bgworker.links import tokens
from bgworker.observe import metrics
from bgworker.ops import cleanup
from tests import dedupe_handlers
from tests.helpers import (
    DeadLetters,
    EventLog,
    Publish,
    StartServer,
    StartWorker,
    get_row,
    list_outbox,
    stored_keys,
    wait_for_status,
    wait_until,
)
from tests.integration.console import PASSWORD, basic, client, log_in
from tests.integration.downloads import fetch

ALICE: dict[str, Any] = {"id": "alice", "email": "alice@example.com"}


@pytest.fixture
def dedupe_registry(settings: settings_mod.Settings) -> None:
    settings.handlers.append("tests.dedupe_handlers:registry")


def _run() -> str:
    return uuid.uuid4().hex


def _reused() -> float:
    labels = {"file_type": "report"}
    return metrics.WORKER.get_sample_value("bgworker_requests_reused_total", labels) or 0.0


async def _download(base: str, signer: tokens.Signer, row: store.RequestRow) -> bytes:
    """The file's bytes (on S3, from the presigned URL the server redirects to)."""
    url = f"{base}/download/{signer.general(row.id)}"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        return await response.read()


async def _status(base: str, signer: tokens.Signer, row: store.RequestRow) -> Any:
    status, _, body = await fetch(
        "GET", f"{base}/status/{signer.general(row.id)}", headers={"Accept": "application/json"}
    )
    assert status == 200
    return json.loads(body)


@pytest.mark.usefixtures("dedupe_registry")
async def test_identical_requests_build_once_and_share_the_bytes(
    settings: settings_mod.Settings,
    db: store.Store,
    publish: Publish,
    start_worker: StartWorker,
    start_server: StartServer,
    signer: tokens.Signer,
    event_log: EventLog,
    smtp_sink: SmtpSink,
) -> None:
    await start_worker()
    base = await start_server()
    run = _run()
    before = _reused()
    first = await publish("report", {"run": run, "rows": 500}, requester=ALICE)
    built = await wait_for_status(db, first.id, "ready")
    # The same criteria with the keys in another order, another filename and lifetime.
    second = await publish(
        "report",
        {"rows": 500, "run": run},
        requester=ALICE,
        filename="again.txt",
        lifetime_seconds=600,
    )
    reused = await wait_for_status(db, second.id, "ready")

    assert dedupe_handlers.CALLS[run] == 1
    assert built.reused_from is None and reused.reused_from == first.id
    assert reused.fingerprint == built.fingerprint is not None
    assert reused.storage_key == built.storage_key and reused.sha256 == built.sha256
    assert reused.expires_at is not None and built.expires_at is not None
    assert reused.expires_at <= built.expires_at
    assert reused.filename == "again.txt"
    assert _reused() == before + 1
    # Two downloads over HTTP, two links, the same bytes.
    one, two = await _download(base, signer, built), await _download(base, signer, reused)
    expected = hashlib.sha256(dedupe_handlers.rows_of({"run": run, "rows": 500})).hexdigest()
    assert hashlib.sha256(one).hexdigest() == hashlib.sha256(two).hexdigest() == expected
    assert (await _status(base, signer, reused))["reused"] is True
    assert (await _status(base, signer, built))["reused"] is False
    # Each request gets its own FileReady and email.
    await wait_until(lambda: len([k for k, _ in event_log if k == "file.ready"]) == 2)
    await wait_until(lambda: len(smtp_sink.messages) == 2)
    ready_ids = {body["id"] for key, body in event_log if key == "file.ready"}
    assert ready_ids == {str(first.id), str(second.id)}


@pytest.mark.usefixtures("dedupe_registry")
async def test_another_requester_or_criteria_builds_again(
    db: store.Store, publish: Publish, start_worker: StartWorker
) -> None:
    await start_worker()
    run = _run()
    first = await publish("report", {"run": run, "rows": 3}, requester=ALICE)
    await wait_for_status(db, first.id, "ready")
    others = [
        await publish("report", {"run": run, "rows": 3}, requester={"id": "bob"}),
        await publish("report", {"run": run, "rows": 4}, requester=ALICE),
        await publish("report", {"run": run, "rows": 3}, requester={**ALICE, "language": "fr"}),
        await publish("report", {"run": run, "rows": 3}),  # no requester at all
    ]
    for event in others:
        row = await wait_for_status(db, event.id, "ready")
        assert row.reused_from is None
    assert dedupe_handlers.CALLS[run] == 1 + len(others)


@pytest.mark.usefixtures("dedupe_registry")
async def test_identical_requests_while_one_builds_wait_for_it(
    db: store.Store, publish: Publish, start_worker: StartWorker, tmp_path: Path
) -> None:
    await start_worker()
    run, gate = _run(), tmp_path / "gate"
    criteria = {"run": run, "rows": 50, "gate": str(gate)}
    published = [await publish("report", criteria, requester=ALICE) for _ in range(3)]

    await wait_until(lambda: _all_are(db, published, "running"))
    await wait_until(lambda: dedupe_handlers.CALLS[run] == 1)
    gate.touch()
    rows = [await wait_for_status(db, e.id, "ready") for e in published]
    assert dedupe_handlers.CALLS[run] == 1
    [leader] = [r for r in rows if r.reused_from is None]
    assert {r.reused_from for r in rows if r is not leader} == {leader.id}
    assert {r.storage_key for r in rows} == {leader.storage_key}


@pytest.mark.usefixtures("dedupe_registry")
async def test_the_waiters_build_when_the_leader_fails(
    db: store.Store, publish: Publish, start_worker: StartWorker, tmp_path: Path
) -> None:
    await start_worker()
    run, gate = _run(), tmp_path / "gate"
    criteria = {"run": run, "rows": 20, "gate": str(gate), "fail_first": True}
    leader, waiters = await _leader_and_waiters(db, publish, criteria, 2)
    gate.touch()  # the leader fails for good (PermanentError)
    failed = await wait_for_status(db, leader.id, {"failed", "ready"})
    assert failed.status == "failed"
    rows = [await wait_for_status(db, e.id, "ready") for e in waiters]
    # One waiter built, the other reused its file: nobody was lost, one build more.
    assert dedupe_handlers.CALLS[run] == 2
    [builder] = [r for r in rows if r.reused_from is None]
    assert [r.reused_from for r in rows if r is not builder] == [builder.id]


@pytest.mark.usefixtures("dedupe_registry")
async def test_a_cancelled_leader_does_not_strand_its_waiter(
    db: store.Store, publish: Publish, start_worker: StartWorker, tmp_path: Path
) -> None:
    await start_worker()
    run, gate = _run(), tmp_path / "gate"
    criteria = {"run": run, "rows": 20, "gate": str(gate)}
    leader, [waiter] = await _leader_and_waiters(db, publish, criteria, 1)
    assert await db.requests.request_cancel(leader.id) == "running"
    await wait_for_status(db, leader.id, "cancelled")
    # The waiter takes over: its own build waits for the gate too.
    await wait_until(lambda: dedupe_handlers.CALLS[run] == 2)
    gate.touch()
    row = await wait_for_status(db, waiter.id, "ready")
    assert row.reused_from is None and dedupe_handlers.CALLS[run] == 2


async def _built_then_reused(
    db: store.Store, publish: Publish, run: str
) -> tuple[store.RequestRow, store.RequestRow]:
    """A request of ``run`` made ready, then an identical one (ready on its file)."""
    first = await publish("report", {"run": run}, requester=ALICE)
    built = await wait_for_status(db, first.id, "ready")
    second = await publish("report", {"run": run}, requester=ALICE)
    return built, await wait_for_status(db, second.id, "ready")


async def _leader_and_waiters(
    db: store.Store, publish: Publish, criteria: dict[str, Any], count: int
) -> tuple[events.FileRequested, list[events.FileRequested]]:
    """One request whose build has started (held at the gate of ``criteria``), then
    ``count`` identical ones, once they are claimed (and so waiting for it)."""
    leader = await publish("report", criteria, requester=ALICE)
    await wait_until(lambda: dedupe_handlers.CALLS[criteria["run"]] == 1)
    waiters = [await publish("report", criteria, requester=ALICE) for _ in range(count)]
    await wait_until(lambda: _all_are(db, waiters, "running"))
    return leader, waiters


async def _all_are(db: store.Store, published: list[events.FileRequested], status: str) -> bool:
    """Every one of ``published`` is recorded with ``status`` (a worker may not have seen
    one yet)."""
    found = [await db.requests.get_request(e.id) for e in published]
    return all(row is not None and row.status == status for row in found)


async def _effects_done(db: store.Store, *rows: store.RequestRow) -> bool:
    """Every outbox effect of ``rows`` performed, and its record committed."""
    effects = [await list_outbox(db, row.id) for row in rows]
    return all(e and all(o["status"] == "done" for o in e) for e in effects)


@pytest.mark.both_storages
@pytest.mark.usefixtures("dedupe_registry")
async def test_cleanup_keeps_bytes_a_live_row_still_serves(
    settings: settings_mod.Settings,
    db: store.Store,
    publish: Publish,
    start_worker: StartWorker,
    start_server: StartServer,
    signer: tokens.Signer,
) -> None:
    await start_worker()
    base = await start_server()
    run = _run()
    built_event = await publish("report", {"run": run, "rows": 40}, requester=ALICE)
    built = await wait_for_status(db, built_event.id, "ready")
    short = await publish("report", {"run": run, "rows": 40}, requester=ALICE, lifetime_seconds=60)
    reused = await wait_for_status(db, short.id, "ready")
    assert reused.reused_from == built.id and reused.storage_key == built.storage_key
    # A ready row is still the worker's until its effects are done: recording the email as
    # sent updates the row, and a clean meanwhile skips the locked row (SKIP LOCKED).
    await wait_until(lambda: _effects_done(db, built, reused))
    # A negative leeway expires what expires within the next 120 s: the reused row (60 s
    # lifetime), not the source (a week). No clock is faked; the SQL compares as it would.
    async with storage.opened(settings) as files:
        report = await cleanup.clean(db, files, leeway_seconds=-120, orphan_age_seconds=0)
    assert report.expired == 1 and report.orphans == 0
    assert (await get_row(db, reused.id)).status == "expired"
    assert (await get_row(db, built.id)).status == "ready"
    assert await stored_keys(settings) == [built.storage_key]
    assert await _download(base, signer, built) == dedupe_handlers.rows_of({"run": run, "rows": 40})
    # The reused link ended with its row; the source's bytes go with the source.
    status, _, _ = await fetch("GET", f"{base}/download/{signer.general(reused.id)}")
    assert status == 410
    async with storage.opened(settings) as files:
        await cleanup.clean(db, files, leeway_seconds=-8 * 24 * 3600, orphan_age_seconds=0)
    assert await stored_keys(settings) == []


@pytest.mark.usefixtures("dedupe_registry")
async def test_the_console_shows_where_a_reused_file_came_from(
    console: str, db: store.Store, publish: Publish, start_worker: StartWorker
) -> None:
    await start_worker()
    first, second = await _built_then_reused(db, publish, _run())
    async with client() as http:
        url = f"{console}/admin/api/requests/{second.id}"
        async with http.get(url, headers=basic("admin", PASSWORD)) as r:
            shown = (await r.json())["row"]
        assert shown["reused_from"] == str(first.id) and shown["fingerprint"]
        await log_in(http, console)
        async with http.get(f"{console}/admin/requests/{second.id}") as r:
            page = await r.text()
        assert 'id="reused-from"' in page and f'href="/admin/requests/{first.id}"' in page
        async with http.get(f"{console}/admin/requests/{first.id}") as r:
            assert 'id="reused-from"' not in await r.text()


@pytest.mark.usefixtures("dedupe_registry")
async def test_another_body_under_a_reused_id_is_still_a_conflicting_duplicate(
    db: store.Store, publish: Publish, start_worker: StartWorker, dead: DeadLetters
) -> None:
    """Dedupe never turns a conflict into a reuse: the id's recorded body wins."""
    await start_worker()
    run = _run()
    first, reused = await _built_then_reused(db, publish, run)
    second = reused
    # The same id as the reused request, the criteria of the first: a different body.
    await publish("report", {"run": run, "rows": 10}, requester=ALICE, id=second.id)
    [letter] = await dead.wait_for(1)
    assert letter.headers["x-bgworker-reason"] == "conflicting_duplicate"
    after = await get_row(db, second.id)  # only its email went out meanwhile
    assert (after.status, after.event, after.storage_key) == (
        reused.status,
        reused.event,
        reused.storage_key,
    )
    assert after.reused_from == first.id
    assert dedupe_handlers.CALLS[run] == 1
