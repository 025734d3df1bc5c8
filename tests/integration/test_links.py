"""Links end to end with a real worker, server, RabbitMQ, PostgreSQL and SMTP: the producer
example of docs/producing.md, link lifetime and clock skew, `bgworker link`/`revoke`/`resend`, link
modes, canonical URLs over HTTP, multi-range, and what a requester is told on failure."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import uuid
from pathlib import Path

import aiohttp
import pytest
import yarl

import bgworker
from bgworker import settings as settings_mod
from bgworker import store
from bgworker.cli.smtp_sink import SmtpSink, text_body
from bgworker.contract import requester_texts
from bgworker.links import tokens
from tests.helpers import (
    EventLog,
    Publish,
    StartServer,
    StartWorker,
    list_outbox,
    wait_for_status,
    wait_until,
)
from tests.integration.downloads import fetch
from tests.integration.letters import Cli

REPO = Path(__file__).resolve().parents[2]
LINK = re.compile(r"http://\S+/(download|status)/(\S+)")


def _rebase(url: str, base: str) -> str:
    """The emailed or printed link on the test server (its port is known only once it
    listens; the token, which is what is checked, is unchanged)."""
    match = LINK.search(url)
    assert match is not None, url
    return f"{base}/{match[1]}/{match[2]}"


def _producing_example() -> str:
    """The first example of docs/producing.md, the publisher."""
    page = (REPO / "docs" / "producing.md").read_text()
    return page.split("```python\n", 1)[1].split("```", 1)[0]


async def test_docs_producer_example_ends_in_a_working_download(
    settings: settings_mod.Settings,
    db: store.Store,
    smtp_sink: SmtpSink,
    start_worker: StartWorker,
    start_server: StartServer,
) -> None:
    """The example as written (only the namespace is the test's own), default link
    settings: the email's link downloads the file and its sha256 matches the row."""
    assert settings.tokens.link_mode == "auto" and settings.web.identity_header is None
    await start_worker()
    base = await start_server()
    code = _producing_example()
    assert 'Requester(id="42", email="ann@example.com"' in code
    assert 'namespace="bgworker"' in code
    code = code.replace('namespace="bgworker"', f'namespace="{settings.namespace}"')
    body = "".join(f"    {line}\n" for line in code.splitlines())
    scope: dict[str, object] = {}
    exec(f"async def example():\n{body}", scope)
    await scope["example"]()  # type: ignore[operator]

    [email] = await smtp_sink.wait_for(1, timeout=60)
    assert email["To"] == "ann@example.com"
    url = _rebase(text_body(email), base)
    status, _, content = await fetch("GET", url)
    assert status == 200, content[:200]
    request_id = uuid.UUID(str(email["Message-ID"]).strip("<>").split(".")[0])
    row = await wait_for_status(db, request_id, "ready")
    assert row.requester_id == "42"
    assert hashlib.sha256(content).hexdigest() == row.sha256


async def test_link_outlives_the_old_one_day_default_and_stops_at_expires_at(
    settings: settings_mod.Settings,
    db: store.Store,
    ready: store.RequestRow,
    server: str,
) -> None:
    old = tokens.Signer(settings.tokens, clock=lambda: time.time() - 2 * 86400)
    url = f"{server}/download/{old.general(ready.id)}"
    assert (await fetch("GET", url))[0] == 200  # two days old, the file lives seven
    # A short lifetime: the file expires two seconds from now, and so does its link.
    await db.pool.execute(
        "UPDATE bgworker_requests SET expires_at = now() + interval '2 seconds' WHERE id = $1",
        ready.id,
    )
    assert (await fetch("GET", url))[0] == 200

    async def gone() -> bool:
        status, _, body = await fetch("GET", url)
        return status == 410 and json.loads(body)["state"] == "expired"

    await wait_until(gone, timeout=15)


async def test_signer_clock_5s_ahead_still_downloads(
    settings: settings_mod.Settings, ready: store.RequestRow, server: str
) -> None:
    ahead = tokens.Signer(settings.tokens, clock=lambda: time.time() + 5)
    status, _, _ = await fetch("GET", f"{server}/download/{ahead.general(ready.id)}")
    assert status == 200
    far = tokens.Signer(settings.tokens, clock=lambda: time.time() + 3600)
    status, _, _ = await fetch("GET", f"{server}/download/{far.general(ready.id)}")
    assert status == 400


async def test_cli_link_revoke_and_a_new_link(
    cli: Cli, ready: store.RequestRow, server: str, signer: tokens.Signer
) -> None:
    code, out, err = await cli("link", str(ready.id))
    assert code == 0, err
    first = _rebase(out.strip(), server)
    status, _, content = await fetch("GET", first)
    assert status == 200 and hashlib.sha256(content).hexdigest() == ready.sha256
    code, out, err = await cli("link", str(ready.id), "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert (doc["mode"], doc["bound_to"], doc["generation"]) == ("general", None, 0)
    second = _rebase(doc["url"], server)
    status_link = _rebase((await cli("link", str(ready.id), "--status"))[1].strip(), server)
    assert (await fetch("GET", status_link))[0] == 200
    assert (await fetch("GET", status_link.replace("/status/", "/download/")))[0] == 403

    code, out, err = await cli("revoke", str(ready.id))
    assert code == 0, err
    for url in (first, second, status_link, f"{server}/download/{signer.general(ready.id)}"):
        status, _, body = await fetch("GET", url)
        assert status == 410, url
        assert json.loads(body)["state"] == "revoked"
    code, out, err = await cli("link", str(ready.id))
    assert code == 0, err
    status, _, content = await fetch("GET", _rebase(out.strip(), server))
    assert status == 200 and hashlib.sha256(content).hexdigest() == ready.sha256

    assert (await cli("link", str(uuid.uuid4())))[0] == 1
    assert (await cli("revoke", str(uuid.uuid4())))[0] == 1


async def test_status_link_before_any_worker_saw_the_request(
    cli: Cli, settings: settings_mod.Settings, server: str
) -> None:
    rid = uuid.uuid4()
    for url in (
        (await cli("link", str(rid), "--status"))[1].strip(),
        bgworker.status_url(settings, rid),
    ):
        status, _, body = await fetch("GET", _rebase(url, server))
        doc = json.loads(body)
        assert (status, doc["state"]) == (200, "waiting"), body
        assert "waiting in the queue" in doc["message"]


async def test_resend_sends_the_ready_email_again_with_a_working_link(
    cli: Cli,
    db: store.Store,
    publish: Publish,
    smtp_sink: SmtpSink,
    start_worker: StartWorker,
    server: str,
) -> None:
    await start_worker()
    event = await publish("blob", {"size": 1000, "seed": 1}, requester={"email": "ann@example.com"})
    row = await wait_for_status(db, event.id, "ready")
    [first] = await smtp_sink.wait_for(1, timeout=30)
    assert (await cli("revoke", str(event.id)))[0] == 0
    assert (await fetch("GET", _rebase(text_body(first), server)))[0] == 410
    code, _, err = await cli("resend", str(event.id))
    assert code == 0, err
    second = (await smtp_sink.wait_for(2, timeout=30))[1]
    assert second["Message-ID"] != first["Message-ID"]
    status, _, content = await fetch("GET", _rebase(text_body(second), server))
    assert status == 200 and hashlib.sha256(content).hexdigest() == row.sha256
    # Once per resend: nothing more arrives, and the outbox row is done again.
    await wait_until(lambda: _email_done(db, event.id), timeout=15)
    assert len(smtp_sink.messages) == 2
    # A request without an email has nothing to resend.
    plain = await publish("blob", {"size": 10, "seed": 1})
    await wait_for_status(db, plain.id, "ready")
    assert (await cli("resend", str(plain.id)))[0] == 1


async def _email_done(db: store.Store, request_id: uuid.UUID) -> bool:
    rows = await list_outbox(db, request_id)
    return any(r["kind"] == "email_ready" and r["status"] == "done" for r in rows)


async def test_bound_mode_without_identity_warns_at_start(
    settings: settings_mod.Settings,
    start_server: StartServer,
    start_worker: StartWorker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings.tokens.link_mode = "bound"
    with caplog.at_level(logging.WARNING, logger="bgworker.links.tokens"):
        await start_server()
        await start_worker()
    warnings = [r for r in caplog.records if "LINK_MODE=bound" in r.getMessage()]
    assert len(warnings) == 2
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bgworker.links.tokens"):
        await start_server(identity=lambda request: request.headers.get("X-User"))
    assert not [r for r in caplog.records if "LINK_MODE=bound" in r.getMessage()]


async def test_bound_link_works_for_its_requester_through_the_identity_header(
    settings: settings_mod.Settings,
    db: store.Store,
    publish: Publish,
    smtp_sink: SmtpSink,
    start_worker: StartWorker,
    start_server: StartServer,
) -> None:
    settings.web.identity_header = "X-User"  # auto mode: now links are bound
    await start_worker()
    base = await start_server()
    event = await publish(
        "blob", {"size": 100, "seed": 2}, requester={"id": "42", "email": "ann@example.com"}
    )
    [email] = await smtp_sink.wait_for(1, timeout=30)
    url = _rebase(text_body(email), base)
    assert "/download/u." in url
    assert (await fetch("GET", url, headers={"X-User": "42"}))[0] == 200
    assert (await fetch("GET", url, headers={"X-User": "43"}))[0] == 403
    await wait_for_status(db, event.id, "ready")


async def test_non_canonical_spellings_of_a_valid_url_are_400(
    ready: store.RequestRow, server: str, signer: tokens.Signer
) -> None:
    token = signer.general(ready.id)
    assert (await fetch("GET", f"{server}/download/{token}"))[0] == 200
    first_dot = token.index(".")
    encoded_dot = token[:first_dot] + "%2E" + token[first_dot + 1 :]
    for path in (token + "%3D", token + "%C3%A9", token + "=", encoded_dot):
        for kind in ("download", "status"):
            status, body = await _fetch_as_sent(f"{server}/{kind}/{path}")
            assert status == 400, (kind, path)
            assert json.loads(body)["state"] == "invalid"


async def _fetch_as_sent(url: str) -> tuple[int, bytes]:
    """GET exactly this URL: yarl would otherwise normalise "%2E" to "." before sending."""
    async with aiohttp.ClientSession() as session:
        async with session.get(yarl.URL(url, encoded=True)) as response:
            return response.status, await response.read()


async def test_satisfiable_multi_range_gets_the_whole_file(
    ready: store.RequestRow, server: str, signer: tokens.Signer
) -> None:
    url = f"{server}/download/{signer.general(ready.id)}"
    for ranges in ("bytes=0-9,20-29", "bytes=0-0, -1", "bytes=5-,0-1"):
        status, _, content = await fetch("GET", url, headers={"Range": ranges})
        assert status == 200, ranges
        assert hashlib.sha256(content).hexdigest() == ready.sha256
    assert (await fetch("GET", url, headers={"Range": "bytes=0-9"}))[0] == 206


async def test_failure_texts_for_the_requester_carry_no_exception(
    cli: Cli,
    settings: settings_mod.Settings,
    db: store.Store,
    publish: Publish,
    smtp_sink: SmtpSink,
    start_worker: StartWorker,
    event_log: EventLog,
    server: str,
    signer: tokens.Signer,
) -> None:
    await start_worker()
    event = await publish("permanent", {}, requester={"email": "ann@example.com"})
    row = await wait_for_status(db, event.id, "failed")
    assert row.last_error is not None and "criteria make no sense" in row.last_error
    [email] = await smtp_sink.wait_for(1, timeout=30)
    assert "criteria make no sense" not in email.as_string()
    # The template's context (kept in the outbox row) has the safe text, not the exception.
    [context] = [
        r["payload"] for r in await list_outbox(db, event.id) if r["kind"] == "email_failed"
    ]
    context = json.loads(context) if isinstance(context, str) else context
    assert context["error"] == context["message"] == requester_texts.failure(row.failure_reason)
    assert "criteria make no sense" not in json.dumps(context)
    await wait_until(lambda: any(k.endswith("failed") for k, _ in event_log), timeout=30)
    [(_, failed)] = [(k, b) for k, b in event_log if k.endswith("failed")]
    assert failed["message"] == requester_texts.failure(row.failure_reason)
    assert "criteria make no sense" in failed["error"]  # services (operators) keep it
    for kind in ("download", "status"):
        _, _, body = await fetch("GET", f"{server}/{kind}/{signer.general(event.id)}")
        assert b"criteria make no sense" not in body
    # Resent, the failure email is just as safe.
    assert (await cli("resend", str(event.id)))[0] == 0
    again = (await smtp_sink.wait_for(2, timeout=30))[1]
    assert "criteria make no sense" not in again.as_string()
    assert again["Message-ID"] != email["Message-ID"]
