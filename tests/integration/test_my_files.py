"""The requester's "my files" page end to end (real worker, server over a socket,
RabbitMQ, PostgreSQL, aiosmtpd): the footer link of the ready email, the page, download,
resend and cancel; POST /my-files; and a requester who tries to reach another's files."""

from __future__ import annotations

import hashlib
import html
import json
import re
import time
import uuid
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
import yarl
from hypothesis import Phase, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.cli.smtp_sink import SmtpSink, text_body
from bgworker.contract import events
from bgworker.links import tokens
from tests import helpers
from tests.helpers import (
    Publish,
    StartServer,
    StartWorker,
    insert_request,
    list_outbox,
    must_match,
    wait_for_status,
    wait_until,
)
from tests.integration.downloads import fetch, tamper

HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
MY_FILES = re.compile(r"http://\S+/my-files/(\S+)")


def _token(mail: Any) -> str:
    return must_match(MY_FILES, text_body(mail)).group(1)


async def _post(base: str, action: str, token: str, request_id: object, **headers: str) -> Any:
    data = {"token": token, "id": str(request_id)}
    return await fetch("POST", f"{base}/my-files/{action}", data=data, headers=headers)


async def _page(base: str, token: str) -> dict[str, Any]:
    status, _, body = await fetch("GET", f"{base}/my-files/{token}")
    assert status == 200, body[:300]
    doc: dict[str, Any] = json.loads(body)
    return doc


async def _outbox_done(db: store.Store, request_id: uuid.UUID, kind: str) -> bool:
    return any(
        r["kind"] == kind and r["status"] == "done" for r in await list_outbox(db, request_id)
    )


async def test_ready_email_footer_page_download_resend_cancel(
    settings: settings_mod.Settings,
    start_server: StartServer,
    start_worker: StartWorker,
    publish: Publish,
    db: store.Store,
    smtp_sink: SmtpSink,
) -> None:
    settings.web.my_files_mail_interval_seconds = 0  # resend at once (the limit: below)
    base = await start_server()
    settings.web.public_url = base  # the worker signs links to this server
    await start_worker()
    ann = {"email": "Ann@Example.com", "timezone": "Europe/Amsterdam"}
    event = await publish("blob", {"size": 5000, "seed": 3}, filename="q<1>.bin", requester=ann)
    row = await wait_for_status(db, event.id, "ready")
    [first] = await smtp_sink.wait_for(1, timeout=30)
    token = _token(first)
    assert token.startswith(tokens.MY_FILES_PREFIX)
    assert f'href="{base}/my-files/{token}"' in first.get_body(("html",)).get_content()  # type: ignore[union-attr]

    # The page lists the file (escaped), with a download link that works.
    status, hdrs, body = await fetch("GET", f"{base}/my-files/{token}", headers=HTML)
    page = body.decode()
    assert status == 200 and hdrs["Content-Type"].startswith("text/html")
    assert "q&lt;1&gt;.bin" in page and "q<1>.bin" not in page
    nonce = must_match(r"script-src 'nonce-([^']+)'", hdrs["Content-Security-Policy"]).group(1)
    assert "form-action 'self'" in hdrs["Content-Security-Policy"]
    assert hdrs["Cache-Control"] == "private, no-store" and hdrs["X-Frame-Options"] == "DENY"
    assert nonce not in page  # nothing is polling: no script on a page with nothing running
    href = html.unescape(must_match(r'class="button download" href="\.\./([^"]+)"', page)[1])
    status, _, content = await fetch("GET", f"{base}/{href}")
    assert status == 200 and hashlib.sha256(content).hexdigest() == row.sha256

    # Resend from the page: a second email, its own Message-ID, a working link.
    status, hdrs, _ = await _post(base, "resend", token, event.id, **HTML, Origin=base)
    assert (status, hdrs["Location"]) == (303, f"{token}?note=resent")
    second = (await smtp_sink.wait_for(2, timeout=30))[1]
    assert second["Message-ID"] != first["Message-ID"]
    link = must_match(rf"{base}/download/\S+", text_body(second)).group(0)
    assert (await fetch("GET", link))[0] == 200
    await wait_until(lambda: _outbox_done(db, event.id, "email_ready"), timeout=15)

    # A running request: listed with its progress, cancelled from the page.
    slow = await publish("slow", {"seconds": 60}, filename="big.csv", requester=ann)
    await wait_for_status(db, slow.id, "running")
    doc = await _page(base, token)
    assert doc["email"] == "ann@example.com"
    listed = {f["id"]: f for f in doc["files"]}
    assert listed[str(slow.id)]["state"] == "running" and listed[str(slow.id)]["cancellable"]
    # JSON clients get absolute links, on the public URL (the server's, set before it started).
    assert "/download/" in listed[str(event.id)]["download_url"]
    status, hdrs, _ = await _post(base, "cancel", token, slow.id, **HTML, Origin=base)
    assert (status, hdrs["Location"]) == (303, f"{token}?note=cancelling")
    await wait_for_status(db, slow.id, "cancelled")
    status, _, body = await fetch("GET", f"{base}/my-files/{token}?note=cancelled", headers=HTML)
    assert 'data-note="cancelled"' in body.decode()
    doc = await _page(base, token)
    assert {f["id"]: f["state"] for f in doc["files"]}[str(slow.id)] == "cancelled"
    # Cancelling again: it has ended.
    status, _, body = await _post(base, "cancel", token, slow.id)
    assert (status, json.loads(body)["note"]) == (409, "not-cancellable")


async def test_post_my_files_answers_the_same_and_is_rate_limited(
    settings: settings_mod.Settings,
    start_server: StartServer,
    start_worker: StartWorker,
    publish: Publish,
    db: store.Store,
    smtp_sink: SmtpSink,
) -> None:
    base = await start_server()
    settings.web.public_url = base
    await start_worker()
    event = await publish("blob", {"size": 10}, requester={"email": "bo@example.com"})
    await wait_for_status(db, event.id, "ready")
    await smtp_sink.wait_for(1, timeout=30)  # the ready email

    answers = set()
    for address in ("BO@example.com", "nobody@example.com"):
        status, _, body = await fetch("POST", f"{base}/my-files", json={"email": address})
        answers.add((status, body))
    assert len(answers) == 1 and next(iter(answers))[0] == 202
    mail = (await smtp_sink.wait_for(2, timeout=30))[1]
    assert mail["To"] == "bo@example.com"
    assert str(mail["Message-ID"]) == f"<{event.id}.my_files@bgworker>"
    doc = await _page(base, _token(mail))
    assert [f["id"] for f in doc["files"]] == [str(event.id)]
    await wait_until(lambda: _outbox_done(db, event.id, "email_my_files"), timeout=15)

    # Again within the interval: the same 202, and the email is not queued again.
    status, _, _ = await fetch("POST", f"{base}/my-files", data={"email": "bo@example.com"})
    assert status == 202
    [row] = [r for r in await list_outbox(db, event.id) if r["kind"] == "email_my_files"]
    assert row["status"] == "done" and "resend" not in row["payload"]
    assert len(smtp_sink.messages) == 2
    # Resend of the ready email from the page: sent a moment ago, so too soon.
    status, _, body = await _post(base, "resend", _token(mail), event.id)
    assert (status, json.loads(body)["note"]) == (429, "too-soon")

    bodies: list[object] = [{"email": "no-at-sign"}, {"email": 5}, {"email": "a@b\r\nBcc: x@y"}, []]
    for bad in bodies:
        status, _, _ = await fetch("POST", f"{base}/my-files", json=bad)
        assert status == 400, bad
    status, _, _ = await fetch(
        "POST", f"{base}/my-files", data=b"x", headers={"Content-Type": "text/plain"}
    )
    assert status == 415
    # A browser's post from another site is refused before anything is read.
    evil = {"Origin": "https://evil.example"}
    status, _, _ = await fetch("POST", f"{base}/my-files", json={"email": "bo@x.org"}, headers=evil)
    assert status == 403


async def test_a_requester_never_reaches_another_requesters_files(
    settings: settings_mod.Settings,
    start_server: StartServer,
    start_worker: StartWorker,
    publish: Publish,
    db: store.Store,
    smtp_sink: SmtpSink,
) -> None:
    settings.web.my_files_mail_interval_seconds = 0
    base = await start_server()
    await start_worker()
    signer = tokens.Signer(settings.tokens)
    a_ready = await publish("blob", {"size": 10}, filename="a.bin", requester={"email": "a@x.org"})
    b_ready = await publish("blob", {"size": 10}, filename="b.bin", requester={"email": "b@x.org"})
    await wait_for_status(db, a_ready.id, "ready")
    await wait_for_status(db, b_ready.id, "ready")
    await wait_until(lambda: _outbox_done(db, b_ready.id, "email_ready"), timeout=30)
    # B's request waiting in the queue (recorded, never published: nothing runs it).
    b_waiting = events.FileRequested(
        id=uuid.uuid4(), file_type="blob", filename="b-wait.bin", requester={"email": "b@x.org"}
    )
    await insert_request(db, b_waiting, max_attempts=3)
    a_token = signer.my_files("a@x.org")
    b_before = await list_outbox(db, b_ready.id)

    doc = await _page(base, a_token)
    assert [f["id"] for f in doc["files"]] == [str(a_ready.id)]
    page = (await fetch("GET", f"{base}/my-files/{a_token}", headers=HTML))[2].decode()
    assert "b.bin" not in page and str(b_ready.id) not in page

    # A's token on B's ids: the answer of an unknown id, and nothing changes.
    for action, target in (
        ("resend", b_ready.id),
        ("cancel", b_waiting.id),
        ("cancel", uuid.uuid4()),
    ):
        status, _, body = await _post(base, action, a_token, target)
        assert (status, json.loads(body)["note"]) == (404, "not-yours"), action
    status, _, body = await _post(base, "cancel", a_token, "not-a-uuid")
    assert status == 404
    assert (await db.requests.get_request(b_waiting.id)).status == "queued"  # type: ignore[union-attr]
    assert await list_outbox(db, b_ready.id) == b_before
    # B's own token does what A's could not.
    status, _, body = await _post(base, "cancel", signer.my_files("b@x.org"), b_waiting.id)
    assert (status, json.loads(body)["note"]) == (200, "cancelled")

    # Tokens of one purpose never serve the other.
    b_download = signer.general(b_ready.id)
    for url in (f"{base}/download/{a_token}", f"{base}/status/{a_token}"):
        assert (await fetch("GET", url))[0] == 400
    assert (await fetch("GET", f"{base}/my-files/{b_download}"))[0] == 400
    assert (await _post(base, "resend", b_download, b_ready.id))[0] == 400
    forged = tokens.MY_FILES_PREFIX + b_download
    assert (await fetch("GET", f"{base}/my-files/{forged}"))[0] == 400
    bound = signer.bound(b_ready.id, "b@x.org")
    assert (await fetch("GET", f"{base}/my-files/{bound}"))[0] == 400

    # Tampered, expired, another key's, percent-encoded.
    assert (await fetch("GET", f"{base}/my-files/{tamper(a_token)}"))[0] == 400
    past = tokens.Signer(settings.tokens, clock=lambda: time.time() - 8 * 86400)
    status, _, body = await fetch("GET", f"{base}/my-files/{past.my_files('a@x.org')}")
    assert (status, json.loads(body)["state"]) == (410, "link_expired")
    other = settings_mod.TokenSettings(secret_keys=["another-key-entirely-0123"])
    assert (await fetch("GET", f"{base}/my-files/{tokens.Signer(other).my_files('a@x.org')}"))[
        0
    ] == 400
    encoded = a_token.replace("m.", "m%2E", 1)
    async with aiohttp.ClientSession() as session:  # sent as written, not normalized
        async with session.get(yarl.URL(f"{base}/my-files/{encoded}", encoded=True)) as answer:
            assert answer.status == 400
    status, _, body = await fetch("GET", f"{base}/my-files/{tamper(a_token)}", headers=HTML)
    assert status == 400 and "This link is not valid" in body.decode()

    # Cross-site posts with a valid token are refused and change nothing.
    a_waiting = events.FileRequested(
        id=uuid.uuid4(), file_type="blob", filename="a-wait.bin", requester={"email": "a@x.org"}
    )
    await insert_request(db, a_waiting, max_attempts=3)
    for headers in (
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Origin": "null", "Sec-Fetch-Site": "same-site"},
        {"Origin": base, "Sec-Fetch-Site": "cross-site"},
    ):
        assert (await _post(base, "cancel", a_token, a_waiting.id, **headers))[0] == 403
    assert (await db.requests.get_request(a_waiting.id)).status == "queued"  # type: ignore[union-attr]
    status, _, _ = await _post(
        # What the page's own form sends: Origin null (its no-referrer policy), same-origin.
        base,
        "cancel",
        a_token,
        a_waiting.id,
        **{"Origin": "null", "Sec-Fetch-Site": "same-origin"},
    )
    assert status == 200


@pytest.mark.parametrize("language", ["fr", "de", "nl"])
async def test_the_page_and_the_footer_speak_the_requesters_language(
    language: str,
    settings: settings_mod.Settings,
    start_server: StartServer,
    start_worker: StartWorker,
    publish: Publish,
    db: store.Store,
    smtp_sink: SmtpSink,
) -> None:
    base = await start_server()
    settings.web.public_url = base
    await start_worker()
    requester = {"email": "c@x.org", "language": language}
    event = await publish("permanent", filename="x.csv", requester=requester)
    await wait_for_status(db, event.id, "failed")
    [mail] = await smtp_sink.wait_for(1, timeout=30)
    footer = {"fr": "Tous vos fichiers", "de": "Alle Ihre Dateien", "nl": "Al uw bestanden"}
    assert footer[language] in text_body(mail)
    status, hdrs, body = await fetch("GET", f"{base}/my-files/{_token(mail)}", headers=HTML)
    assert status == 200 and hdrs["Content-Language"] == language
    heading = {"fr": "Vos fichiers", "de": "Ihre Dateien", "nl": "Uw bestanden"}
    assert f"<h1>{heading[language]}</h1>" in body.decode()


def _hostile(n: int) -> list[tuple[str, str, str]]:
    """n (token, id, email) triples from hypothesis, the same on every run: text of any
    kind, near-tokens (a real token's prefix with junk), ids and addresses."""
    real = tokens.Signer(settings_mod.TokenSettings(secret_keys=["k" * 20])).my_files("a@x.org")
    text = st.text(max_size=80)
    token = st.one_of(text, text.map(lambda t: real[: len(real) // 2] + t), st.just(real))
    ident = st.one_of(text, st.uuids().map(str))
    email = st.one_of(text, st.emails(), text.map(lambda t: f"{t}@x.org"))
    out: list[tuple[str, str, str]] = []

    @hsettings(max_examples=n, database=None, derandomize=True, phases=[Phase.generate])
    @given(st.tuples(token, ident, email))
    def collect(triple: tuple[str, str, str]) -> None:
        out.append(triple)

    collect()
    return out


async def test_hostile_forms_and_tokens_never_fail_nor_touch_another_requester(
    settings: settings_mod.Settings, start_server: StartServer, db: store.Store
) -> None:
    base = await start_server()
    other = events.FileRequested(
        id=uuid.uuid4(), file_type="blob", filename="b.bin", requester={"email": "b@x.org"}
    )
    await insert_request(db, other, max_attempts=3)
    for token, ident, email in _hostile(helpers.examples(60)):
        for action in ("resend", "cancel"):
            status, _, _ = await fetch(
                "POST", f"{base}/my-files/{action}", data={"token": token, "id": ident}
            )
            assert status in (400, 404, 410), (action, token, ident)
        status, _, _ = await fetch("POST", f"{base}/my-files", data={"email": email})
        assert status in (202, 400), email
        status, _, _ = await fetch("GET", f"{base}/my-files/{quote(token, safe='')}")
        assert status < 500, token
    assert (await db.requests.get_request(other.id)).status == "queued"  # type: ignore[union-attr]
    # Only b@x.org has a request: no other address was ever sent anything.
    rows = await db.pool.fetch("SELECT payload ->> 'to' AS to FROM bgworker_outbox")
    assert {r["to"] for r in rows} <= {"b@x.org"}


async def test_bound_links_on_the_page_open_only_for_their_requester(
    settings: settings_mod.Settings,
    start_server: StartServer,
    start_worker: StartWorker,
    publish: Publish,
    db: store.Store,
) -> None:
    """With an identity header (links bound to the requester's id), the page's download
    links are bound as the email's are: the requester opens them, someone else gets 403."""
    settings.web.identity_header = "X-Auth-User"
    base = await start_server()
    await start_worker()
    event = await publish("blob", {"size": 10}, requester={"id": "ann", "email": "ann@x.org"})
    row = await wait_for_status(db, event.id, "ready")
    doc = await _page(base, tokens.Signer(settings.tokens).my_files("ann@x.org"))
    [listed] = doc["files"]
    token = listed["download_url"].rsplit("/", 1)[1]
    assert token.startswith(tokens.BOUND_PREFIX)
    url = f"{base}/download/{token}"
    assert (await fetch("GET", url, headers={"X-Auth-User": "bob"}))[0] == 403
    assert (await fetch("GET", url))[0] == 403
    status, _, content = await fetch("GET", url, headers={"X-Auth-User": "ann"})
    assert status == 200 and hashlib.sha256(content).hexdigest() == row.sha256
