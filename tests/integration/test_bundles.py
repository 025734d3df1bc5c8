"""Bundles (issue 23, part 1) on real RabbitMQ, PostgreSQL, an aiosmtpd SMTP server and HTTP
over a socket: one BundleRequested, a request per part, one email, one page, one ZIP."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import re
import signal
import sys
import uuid
import zipfile
import zlib
from typing import Any

import aio_pika
import pytest
from pydantic import SecretStr

from bgworker import settings as settings_mod
from bgworker import storage, store
from bgworker.cli.smtp_sink import SmtpSink
from bgworker.contract import bundles, events
from bgworker.links import tokens
from bgworker.messaging import publisher
from bgworker.ops import erasure
from tests.handlers import blob_bytes
from tests.helpers import (
    AMQP_URL,
    REPO,
    StartServer,
    StartWorker,
    settings_env,
    stored_path,
    wait_until,
)
from tests.integration.downloads import fetch, tamper
from tests.integration.letters import Cli

pytestmark = pytest.mark.usefixtures("amqp")


async def _publish(settings: settings_mod.Settings, bundle: bundles.BundleRequested) -> None:
    async with publisher.Publisher(
        AMQP_URL, namespace=settings.namespace, queue_type=settings.queue_type
    ) as pub:
        await pub.publish_bundle(bundle)


def _bundle(parts: list[dict[str, Any]], **fields: Any) -> bundles.BundleRequested:
    return bundles.BundleRequested.model_validate(
        {
            "id": str(uuid.uuid4()),
            "parts": parts,
            "requester": {"email": "ann@example.com", "language": "en"},
            "description": "Q3 <exports>",
            **fields,
        }
    )


def _body(message: Any) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


async def _ended(db: store.Store, bundle_id: uuid.UUID) -> list[store.RequestRow]:
    async def done() -> bool:
        found = await db.bundles.get(bundle_id)
        return found is not None and found.finished_at is not None

    await wait_until(done)
    return await db.bundles.parts(bundle_id)


THREE: list[dict[str, Any]] = [
    {"file_type": "blob", "criteria": {"size": 1000, "seed": 1}, "filename": "a.bin"},
    {"file_type": "blob", "criteria": {"size": 70000, "seed": 2}, "filename": "b.bin"},
    {"file_type": "blob", "criteria": {"size": 0, "seed": 3}, "filename": "empty.bin"},
]


async def test_a_bundle_of_three_parts_end_to_end(
    settings: settings_mod.Settings,
    db: store.Store,
    start_worker: StartWorker,
    start_server: StartServer,
    smtp_sink: SmtpSink,
) -> None:
    await start_worker()
    base = await start_server()
    bundle = _bundle(THREE)
    await _publish(settings, bundle)
    await _publish(settings, bundle)  # a duplicate: one bundle, one email
    parts = await _ended(db, bundle.id)
    assert [p.status for p in parts] == ["ready"] * 3
    assert [p.id for p in parts] == [bundles.part_id(bundle.id, i) for i in range(3)]
    [mail] = await smtp_sink.wait_for(1, timeout=10)
    text = _body(mail)
    assert "a.bin" in text and "b.bin" in text and "empty.bin" in text
    url = re.search(r"http://\S+/bundle/(\S+)", text)
    assert url is not None
    token = url.group(1)

    # The page: each part, a link per part, the ZIP; the description escaped.
    status, headers, page = await fetch(
        "GET", f"{base}/bundle/{token}", headers={"Accept": "text/html"}
    )
    html = page.decode()
    assert status == 200 and "default-src 'none'" in headers["Content-Security-Policy"]
    assert html.count('class="download"') == 3 and "Q3 &lt;exports&gt;" in html
    status, _, answer = await fetch("GET", f"{base}/bundle/{token}")
    views = json.loads(answer)["parts"]
    for view, spec in zip(views, THREE, strict=True):
        link = base + view["download_url"].removeprefix(settings.web.public_url)
        status, _, data = await fetch("GET", link)
        assert status == 200
        assert data == blob_bytes(spec["criteria"]["size"], spec["criteria"]["seed"])

    # The ZIP: HEAD gives the length, GET the archive, a Range the same slice of it.
    status, head, _ = await fetch("HEAD", f"{base}/bundle/{token}/zip")
    assert status == 200
    length = int(head["Content-Length"])
    status, got, whole = await fetch("GET", f"{base}/bundle/{token}/zip")
    assert status == 200 and len(whole) == length and got["ETag"] == head["ETag"]
    archive = zipfile.ZipFile(io.BytesIO(whole))
    assert archive.testzip() is None
    for spec in THREE:
        expected = blob_bytes(spec["criteria"]["size"], spec["criteria"]["seed"])
        digest = hashlib.sha256(archive.read(spec["filename"])).hexdigest()
        assert digest == hashlib.sha256(expected).hexdigest()
    for first, last in [(0, 99), (1100, 40000), (length - 50, length - 1), (500, length - 1)]:
        status, part_headers, piece = await fetch(
            "GET",
            f"{base}/bundle/{token}/zip",
            headers={"Range": f"bytes={first}-{last}", "If-Range": head["ETag"]},
        )
        assert status == 206 and piece == whole[first : last + 1]
        assert part_headers["Content-Range"] == f"bytes {first}-{last}/{length}"

    # The CRCs the whole download computed are recorded: a resume near the end then reads no
    # part (one removed from storage here) and still gets the same bytes.
    crcs = await db.bundles.crcs(bundle.id)
    assert set(crcs) == {parts[0].id, parts[1].id}  # the empty part has nothing to read
    assert crcs[parts[0].id] == zlib.crc32(blob_bytes(1000, 1))
    # Same size, other bytes: read again for its CRC, the directory would differ.
    stored = stored_path(storage.LocalStorage(settings.storage_dir), parts[1])
    stored.write_bytes(bytes(len(stored.read_bytes())))
    status, _, tail = await fetch(
        "GET", f"{base}/bundle/{token}/zip", headers={"Range": f"bytes={archive.start_dir}-"}
    )
    assert status == 206 and tail == whole[archive.start_dir :]

    # A part removed behind its row: the ZIP is a 410 before any byte, not a cut stream.
    stored.unlink()
    status, _, gone = await fetch("GET", f"{base}/bundle/{token}/zip")
    assert status == 410 and json.loads(gone)["state"] == "gone"

    # Tokens: tampered, or a request's token used as a bundle's, are refused.
    status, _, _ = await fetch("GET", f"{base}/bundle/{tamper(token)}")
    assert status == 400
    request_token = views[0]["download_url"].split("/")[-1].split("?")[0]
    status, _, _ = await fetch("GET", f"{base}/bundle/{request_token}/zip")
    assert status == 400
    assert len(smtp_sink.messages) == 1


async def test_a_part_that_fails_for_good_is_named_and_left_out_of_the_zip(
    settings: settings_mod.Settings,
    db: store.Store,
    start_worker: StartWorker,
    start_server: StartServer,
    smtp_sink: SmtpSink,
) -> None:
    await start_worker()
    base = await start_server()
    bundle = _bundle([THREE[0], {"file_type": "permanent", "filename": "broken.csv"}, THREE[1]])
    await _publish(settings, bundle)
    parts = await _ended(db, bundle.id)
    assert [p.status for p in parts] == ["ready", "failed", "ready"]
    [mail] = await smtp_sink.wait_for(1, timeout=10)
    text = _body(mail)
    assert "Failed: broken.csv" in text and "some could not be made" in str(mail["Subject"])
    url = re.search(r"http://\S+/bundle/(\S+)", text)
    assert url is not None
    status, _, whole = await fetch("GET", f"{base}/bundle/{url.group(1)}/zip")
    assert status == 200
    assert sorted(zipfile.ZipFile(io.BytesIO(whole)).namelist()) == ["a.bin", "b.bin"]


async def test_cancelling_a_bundle_cancels_its_parts(
    settings: settings_mod.Settings,
    db: store.Store,
    start_worker: StartWorker,
    smtp_sink: SmtpSink,
) -> None:
    await start_worker()
    bundle = _bundle(
        [
            {"file_type": "slow", "criteria": {"seconds": 30 + i}, "filename": f"h{i}"}
            for i in range(2)
        ]
    )
    await _publish(settings, bundle)

    async def running() -> bool:
        return [p.status for p in await db.bundles.parts(bundle.id)] == ["running"] * 2

    await wait_until(running)
    async with publisher.Publisher(
        AMQP_URL, namespace=settings.namespace, queue_type=settings.queue_type
    ) as pub:
        await pub.cancel(bundle.id)

    async def cancelled() -> bool:
        return [p.status for p in await db.bundles.parts(bundle.id)] == ["cancelled"] * 2

    await wait_until(cancelled)
    found = await db.bundles.get(bundle.id)
    assert found is not None and found.cancel_requested and found.finished_at is None
    assert smtp_sink.messages == []


@pytest.mark.parametrize(
    ("parts", "problem"),
    [
        ([{"file_type": "blob"}] * (bundles.MAX_PARTS + 1), "at most 20"),
        ([{"file_type": "blob"}, {"file_type": "blob"}], "the same part as parts[0]"),
        ([{"file_type": "blob", "filename": "x"}, {"file_type": "slow", "filename": "x"}], "also"),
        ([{"file_type": "no such type!"}], "file_type"),
    ],
)
def test_hostile_bundles_are_refused_by_name(parts: list[dict[str, Any]], problem: str) -> None:
    body = json.dumps({"id": str(uuid.uuid4()), "parts": parts}).encode()
    with pytest.raises(events.InvalidEventError) as refused:
        bundles.parse_bundle_requested(body)
    assert problem in str(refused.value)


async def test_a_bundle_naming_an_unknown_file_type_is_dead_lettered_whole(
    settings: settings_mod.Settings,
    db: store.Store,
    start_worker: StartWorker,
    amqp: aio_pika.abc.AbstractChannel,
) -> None:
    worker = await start_worker()
    bundle = _bundle([THREE[0], {"file_type": "not_registered"}])
    await _publish(settings, bundle)
    await wait_until(lambda: worker.outcomes["invalid"] == 1)
    assert await db.bundles.get(bundle.id) is None
    assert await db.requests.get_request(bundles.part_id(bundle.id, 0)) is None


async def test_parts_ending_together_on_two_workers_send_each_bundle_one_email(
    settings: settings_mod.Settings,
    db: store.Store,
    start_worker: StartWorker,
    smtp_sink: SmtpSink,
) -> None:
    # Parts of one bundle end at once in different transactions (and in one group commit):
    # the bundle row's lock makes exactly one of them write the email.
    await start_worker()
    await start_worker()
    made = [
        _bundle([{"file_type": "blob", "criteria": {"size": 10, "seed": i}} for i in range(6)])
        for _ in range(8)
    ]
    for bundle in made:
        await _publish(settings, bundle)
    for bundle in made:
        await _ended(db, bundle.id)
    await smtp_sink.wait_for(len(made), timeout=20)
    ids = sorted(str(m["Message-ID"]) for m in smtp_sink.messages)
    assert ids == sorted(f"<{b.id}.bundle@bgworker>" for b in made)
    for bundle in made:
        effects = await db.pool.fetch(
            "SELECT kind FROM bgworker_outbox o JOIN bgworker_requests r ON r.id = o.request_id "
            "WHERE r.bundle_id = $1 AND o.kind LIKE 'email%'",
            bundle.id,
        )
        assert [e["kind"] for e in effects] == ["email_bundle"]


async def test_bgworker_cancel_of_a_bundle_id_cancels_its_parts(
    settings: settings_mod.Settings, db: store.Store, start_worker: StartWorker, cli: Cli
) -> None:
    await start_worker()
    bundle = _bundle(
        [
            {"file_type": "slow", "criteria": {"seconds": 30 + i}, "filename": f"s{i}"}
            for i in range(2)
        ]
    )
    await _publish(settings, bundle)

    async def running() -> bool:
        return [p.status for p in await db.bundles.parts(bundle.id)] == ["running"] * 2

    await wait_until(running)
    # `bgworker status` of the bundle's id: the bundle and its parts, each with its status.
    code, out, err = await cli("status", str(bundle.id))
    assert code == 0, err
    parts = [str(p.id) for p in await db.bundles.parts(bundle.id)]
    assert out.startswith(f"bundle {bundle.id}: 2 part(s) (2 running); in progress"), out
    assert all(f"{part}  slow  running" in out for part in parts), out
    code, out, err = await cli("cancel", str(bundle.id))
    assert code == 0, err
    assert out.strip() == f"{bundle.id}: cancelling (running)"

    async def cancelled() -> bool:
        return [p.status for p in await db.bundles.parts(bundle.id)] == ["cancelled"] * 2

    await wait_until(cancelled)
    code, out, err = await cli("status", str(bundle.id), "--json")
    assert code == 0, err
    shown = json.loads(out)
    assert shown["kind"] == "bundle" and shown["cancel_requested"] is True
    assert [(p["id"], p["status"]) for p in shown["part_status"]] == [
        (part, "cancelled") for part in parts
    ]
    # An id that is neither a request's nor a bundle's: not recorded (exit 3), as before.
    code, _, err = await cli("status", str(uuid.uuid4()))
    assert code == 3 and "not recorded" in err


async def test_a_cancel_before_its_bundle_means_no_part_is_built(
    settings: settings_mod.Settings,
    db: store.Store,
    start_worker: StartWorker,
    smtp_sink: SmtpSink,
) -> None:
    worker = await start_worker()
    bundle = _bundle(THREE)
    async with publisher.Publisher(
        AMQP_URL, namespace=settings.namespace, queue_type=settings.queue_type
    ) as pub:
        await pub.cancel(bundle.id)
        await _wait_status(db, bundle.id)  # recorded as a placeholder, as for a request
        await pub.publish_bundle(bundle)
    await wait_until(lambda: worker.outcomes["bundled"] == 1)
    parts = await db.bundles.parts(bundle.id)
    assert [p.status for p in parts] == ["cancelled"] * 3
    assert all(p.attempts == 0 for p in parts)
    assert smtp_sink.messages == []


async def _wait_status(db: store.Store, request_id: uuid.UUID) -> None:
    async def placeholder() -> bool:
        return await db.requests.get_request(request_id) is not None

    await wait_until(placeholder)


async def test_the_front_door_takes_a_bundle_and_answers_its_page_link(
    settings: settings_mod.Settings,
    db: store.Store,
    start_worker: StartWorker,
    start_server: StartServer,
    smtp_sink: SmtpSink,
) -> None:
    key = "k-" + "b" * 30
    settings.web.api_keys = [SecretStr(key)]
    await start_worker()
    base = await start_server()
    auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    bundle = _bundle(THREE[:2])
    body = bundle.model_dump_json()
    status, _, raw = await fetch("POST", f"{base}/bundles", data=body, headers=auth)
    assert status == 202
    answer = json.loads(raw)
    assert answer["parts"] == [str(bundles.part_id(bundle.id, i)) for i in range(2)]
    status, _, raw = await fetch("POST", f"{base}/bundles", data=body, headers=auth)
    assert status == 202  # again: harmless
    await _ended(db, bundle.id)
    await smtp_sink.wait_for(1, timeout=10)
    path = answer["bundle_url"].removeprefix(settings.web.public_url)
    status, _, page = await fetch("GET", base + path)
    assert status == 200 and json.loads(page)["done"] is True
    assert len(smtp_sink.messages) == 1

    # Every part ended: nothing to cancel, as for a request that ended.
    status, _, raw = await fetch("DELETE", f"{base}/bundles/{bundle.id}", headers=auth)
    assert status == 409 and json.loads(raw)["request_status"] == "ready"

    hostile = {**json.loads(body), "parts": [{"file_type": "blob"}] * 2}
    status, _, raw = await fetch("POST", f"{base}/bundles", data=json.dumps(hostile), headers=auth)
    assert status == 422 and "the same part as parts[0]" in json.loads(raw)["error"]
    status, _, _ = await fetch("POST", f"{base}/bundles", data=body)
    assert status == 401


async def test_forgetting_a_requester_scrubs_their_bundles(
    settings: settings_mod.Settings,
    db: store.Store,
    start_worker: StartWorker,
    smtp_sink: SmtpSink,
) -> None:
    await start_worker()
    bundle = _bundle(THREE[:1])
    await _publish(settings, bundle)
    await _ended(db, bundle.id)
    await db.erasure.erase(erasure.Subject.requester("ann@example.com"))
    found = await db.bundles.get(bundle.id)
    assert found is not None
    assert found.event == {} and found.requester_email is None and found.cancel_requested


async def test_a_worker_killed_mid_part_still_ends_the_bundle_with_one_email(
    settings: settings_mod.Settings,
    db: store.Store,
    start_worker: StartWorker,
    smtp_sink: SmtpSink,
) -> None:
    # A real worker process takes the bundle and its parts, and is killed -9 while the slow
    # part runs: the reaper puts that part back when its lease runs out, a second worker
    # builds it, and the bundle's one email is sent once.
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bgworker",
        "worker",
        cwd=REPO,
        env={**settings_env(settings), "BGWORKER_LOG_LEVEL": "WARNING"},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        bundle = _bundle([THREE[0], {"file_type": "slow", "criteria": {"seconds": 8}}])
        await _publish(settings, bundle)

        async def slow_running() -> bool:
            parts = await db.bundles.parts(bundle.id)
            return [p.status for p in parts] == ["ready", "running"]

        await wait_until(slow_running)
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    await start_worker()
    parts = await _ended(db, bundle.id)
    assert [p.status for p in parts] == ["ready", "ready"]
    assert parts[1].attempts == 2  # the killed attempt, then the one that built it
    await smtp_sink.wait_for(1, timeout=30)
    assert [str(m["Message-ID"]) for m in smtp_sink.messages] == [f"<{bundle.id}.bundle@bgworker>"]


async def test_a_bundle_link_is_refused_to_another_user_and_from_another_key(
    settings: settings_mod.Settings, start_server: StartServer
) -> None:
    settings.web.identity_header = "X-Remote-User"
    base = await start_server()
    bundle_id = uuid.uuid4()
    bound = tokens.Signer(settings.tokens, bind=True).for_bundles()
    token = bound.issue(bundle_id, requester_id="ann")
    url = f"{base}/bundle/{token}"
    status, _, _ = await fetch("GET", url, headers={"X-Remote-User": "ann"})
    assert status == 404  # hers, not recorded by a worker yet: waiting
    status, _, page = await fetch(
        "GET", url, headers={"X-Remote-User": "bob", "Accept": "text/html"}
    )
    assert status == 403 and "belongs to someone else" in page.decode()
    status, _, _ = await fetch("GET", f"{url}/zip")
    assert status == 403
    other = settings.tokens.model_copy(
        update={"secret_keys": [SecretStr("another-key-" + "x" * 20)]}
    )
    foreign = tokens.Signer(other).for_bundles().issue(bundle_id)
    status, _, _ = await fetch("GET", f"{base}/bundle/{foreign}")
    assert status == 400
    request_link = tokens.Signer(settings.tokens).issue(bundle_id)  # a request's, not a bundle's
    status, _, _ = await fetch("GET", f"{base}/bundle/{request_link}")
    assert status == 400


@pytest.mark.both_storages
async def test_the_zip_streams_from_either_backend(
    settings: settings_mod.Settings,
    db: store.Store,
    start_worker: StartWorker,
    start_server: StartServer,
    storage_backend: str,
) -> None:
    # With S3 the single downloads redirect (download_mode auto); the ZIP is streamed by the
    # server, each part read with ranged GETs through the Source a streamed download uses.
    await start_worker()
    base = await start_server()
    bundle = _bundle(THREE[:2])
    await _publish(settings, bundle)
    await _ended(db, bundle.id)
    token = tokens.Signer(settings.tokens).for_bundles().issue(bundle.id)
    status, _, whole = await fetch("GET", f"{base}/bundle/{token}/zip")
    assert status == 200
    archive = zipfile.ZipFile(io.BytesIO(whole))
    for spec in THREE[:2]:
        expected = blob_bytes(spec["criteria"]["size"], spec["criteria"]["seed"])
        assert archive.read(spec["filename"]) == expected
    first, last = 900, 3000  # across the end of a.bin, its descriptor and b.bin's header
    status, _, piece = await fetch(
        "GET", f"{base}/bundle/{token}/zip", headers={"Range": f"bytes={first}-{last}"}
    )
    assert status == 206 and piece == whole[first : last + 1]
