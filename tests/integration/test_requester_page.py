"""The requester's page over real HTTP: every state as a browser gets it, in the requester's
language, with the security headers; API clients keep JSON; an override template wins."""

from __future__ import annotations

import json
import logging
import re
import uuid
from pathlib import Path

import pytest

from bgworker import languages, store
from bgworker import settings as settings_mod
from bgworker.contract import events
from bgworker.links import tokens
from bgworker.web import headers as web_headers
from tests.helpers import Publish, StartServer, StartWorker, insert_request, wait_for_status
from tests.integration.downloads import IDENTITY, Headers, fetch, signer_in_the_past, tamper
from tests.integration.letters import Cli

BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
NONCE_RE = re.compile(r"script-src 'nonce-([A-Za-z0-9_-]+)'")


async def page(url: str, **headers: str) -> tuple[int, Headers, str]:
    status, hdrs, body = await fetch("GET", url, headers={**BROWSER, **headers})
    return status, hdrs, body.decode()


def assert_page(hdrs: Headers, text: str) -> None:
    assert hdrs["Content-Type"] == "text/html; charset=utf-8"
    for name, value in web_headers.SECURITY_HEADERS.items():
        assert hdrs[name] == value  # no-store, no-referrer, nosniff: as the JSON answers
    assert hdrs["X-Frame-Options"] == "DENY"
    csp = hdrs["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    nonce = NONCE_RE.search(csp)
    assert nonce is not None
    # Every script on the page carries this response's nonce; nothing else may run.
    scripts = re.findall(r"<script[^>]*>", text)
    assert all(f'nonce="{nonce[1]}"' in tag for tag in scripts)
    assert "Content-Disposition" not in hdrs


async def queued(db: store.Store, **requester: str) -> events.FileRequested:
    event = events.FileRequested(
        id=uuid.uuid4(),
        file_type="blob",
        filename="rapport <2026>.csv",
        requester=requester or None,
    )
    await insert_request(db, event, max_attempts=3)
    return event


async def test_french_requester_gets_the_french_page_and_api_clients_keep_json(
    server: str, db: store.Store, signer: tokens.Signer
) -> None:
    event = await queued(db, language="fr", timezone="Europe/Paris")
    url = f"{server}/download/{signer.general(event.id)}"
    status, hdrs, text = await page(url)
    assert status == 409  # the JSON answer's status, a page for the browser
    assert_page(hdrs, text)
    assert hdrs["Content-Language"] == "fr"
    assert '<html lang="fr">' in text
    assert "Votre fichier est en préparation" in text
    assert "rapport &lt;2026&gt;.csv" in text  # escaped, never markup
    assert "<progress" in text and re.search(r"\b0\s%", text)  # French: a space before %
    # The same link for curl, wget or a script: JSON, as before.
    for accept in ("*/*", "application/json"):
        status, hdrs, body = await fetch("GET", url, headers={"Accept": accept})
        assert status == 409 and hdrs["Content-Type"].startswith("application/json")
        assert json.loads(body)["status"] == 409
    # The status link opens the same page in a browser, and JSON for the page's poller.
    status_url = f"{server}/status/{signer.general(event.id)}"
    assert "Votre fichier est en préparation" in (await page(status_url))[2]
    status, _, body = await fetch("GET", status_url, headers={"Accept": "application/json"})
    assert status == 200 and json.loads(body)["status"] == "queued"


async def test_unknown_language_falls_back_to_english(
    server: str, db: store.Store, signer: tokens.Signer
) -> None:
    event = await queued(db, language="pt-BR")
    status, hdrs, text = await page(f"{server}/download/{signer.general(event.id)}")
    assert status == 409 and hdrs["Content-Language"] == "en"
    assert "Your file is being prepared" in text


async def test_a_request_no_worker_has_seen_is_waiting_in_the_queue(
    server: str, signer: tokens.Signer
) -> None:
    url = f"{server}/status/{signer.general(uuid.uuid4())}"
    status, hdrs, text = await page(url, **{"Accept-Language": "de-CH, fr;q=0.5"})
    assert status == 200  # /status answers a request not seen yet as waiting
    assert_page(hdrs, text)
    assert "Wartet in der Warteschlange" in text  # no requester yet: the browser's language


async def test_refusals_say_what_happened_and_nothing_about_the_request(
    settings: settings_mod.Settings,
    start_server: StartServer,
    db: store.Store,
    signer: tokens.Signer,
) -> None:
    settings.web.identity_header = IDENTITY
    base = await start_server()
    event = await queued(db, id="alice", language="fr")
    bound = signer.bound(event.id, "alice")
    status, hdrs, text = await page(f"{base}/download/{bound}", **{IDENTITY: "mallory"})
    assert status == 403
    assert_page(hdrs, text)
    assert "This link belongs to someone else" in text
    assert "rapport" not in text and str(event.id) not in text
    status, hdrs, text = await page(f"{base}/download/{tamper(bound)}")
    assert status == 400 and "This link is not valid" in text and "rapport" not in text
    # The owner sees their page.
    status, _, text = await page(f"{base}/download/{bound}", **{IDENTITY: "alice"})
    assert status == 409 and "rapport" in text


async def test_refused_links_name_nothing_about_the_request(
    settings: settings_mod.Settings,
    start_server: StartServer,
    db: store.Store,
    signer: tokens.Signer,
    cli: Cli,
) -> None:
    """Revoked (after `bgworker revoke`), expired, signed with another key, tampered or
    someone else's: the page says what happened to the link, in the browser's language,
    and nothing the request holds (its JSON answer shows none of it either)."""
    settings.tokens.max_age_seconds = 3600
    settings.web.identity_header = IDENTITY
    base = await start_server()
    event = events.FileRequested(
        id=uuid.uuid4(),
        file_type="blob",
        filename="salaires-lyon.csv",
        description="Paie du troisième trimestre",
        requester={"id": "alice", "language": "fr", "timezone": "Europe/Paris"},
    )
    await insert_request(db, event, max_attempts=3)
    row = await db.requests.get_request(event.id)
    assert row is not None
    requested = languages.format_datetime(row.requested_at, "Europe/Paris", "fr")
    shown: list[str] = [row.filename, "Paie du troisième trimestre", requested, 'lang="fr"']
    general, bound = signer.general(event.id), signer.bound(event.id, "alice")
    # While the link is good its page names the file (what must vanish below).
    status, _, text = await page(f"{base}/status/{general}")
    assert status == 200 and all(p in text for p in shown), text

    assert (await cli("revoke", str(event.id)))[0] == 0
    other = tokens.Signer(settings_mod.TokenSettings(secret_keys=["another key" * 3]))
    refused = [
        (f"/download/{general}", {}, 410, "This link has been withdrawn"),
        (f"/status/{general}", {}, 410, "This link has been withdrawn"),
        (f"/status/{bound}", {IDENTITY: "alice"}, 410, "This link has been withdrawn"),
        (
            f"/download/{signer_in_the_past(settings.tokens, 7200).general(event.id)}",
            {},
            410,
            "expired",
        ),
        (f"/status/{other.general(event.id)}", {}, 400, "This link is not valid"),
        (f"/download/{tamper(general)}", {}, 400, "This link is not valid"),
        (f"/download/{bound}", {IDENTITY: "mallory"}, 403, "This link belongs to someone else"),
    ]
    for path, extra, expected, words in refused:
        status, hdrs, text = await page(base + path, **{"Accept-Language": "en", **extra})
        assert (status, hdrs["Content-Language"]) == (expected, "en"), path
        assert words in text, path
        assert_page(hdrs, text)
        leaked = [p for p in [*shown, str(event.id)] if p in text]
        assert not leaked, (path, leaked)
        assert "<dl>" not in text and "<title>Your file</title>" in text


async def test_failed_page_shows_no_exception_text(
    server: str, db: store.Store, signer: tokens.Signer, publish: Publish, start_worker: StartWorker
) -> None:
    await start_worker()
    event = await publish("permanent", filename="report.pdf", requester={"language": "nl"})
    row = await wait_for_status(db, event.id, "failed")
    assert row.last_error and "criteria make no sense" in row.last_error  # operators keep it
    status, hdrs, text = await page(f"{server}/download/{signer.general(event.id)}")
    assert status == 410
    assert_page(hdrs, text)
    assert "We konden dit bestand niet maken" in text and str(event.id) in text
    assert "criteria make no sense" not in text and "PermanentError" not in text


async def test_ready_then_expired(
    server: str, db: store.Store, signer: tokens.Signer, publish: Publish, start_worker: StartWorker
) -> None:
    await start_worker()
    event = await publish("blob", {"size": 5000}, filename="data.bin", requester={})
    await wait_for_status(db, event.id, "ready")
    url = f"{server}/download/{signer.general(event.id)}"
    status, hdrs, text = await page(url)
    assert status == 200 and "Your file is ready" in text and "4.9 KiB" in text
    assert "no-store" in hdrs["Cache-Control"]
    # The button asks for the bytes; a browser following it gets the file, not the page.
    href = re.search(r'id="download" href="([^"]+)"', text)
    assert href is not None and href[1].startswith("../download/")
    status, hdrs, body = await fetch("GET", f"{server}/download/{href[1][12:]}", headers=BROWSER)
    assert status == 200 and len(body) == 5000 and "attachment" in hdrs["Content-Disposition"]
    await db.pool.execute(
        "UPDATE bgworker_requests SET expires_at = now() - interval '1 second' WHERE id = $1",
        event.id,
    )
    status, hdrs, text = await page(url)
    assert status == 410 and "This file has expired" in text and 'id="download"' not in text


async def test_template_in_the_override_directory_wins(
    settings: settings_mod.Settings,
    start_server: StartServer,
    db: store.Store,
    signer: tokens.Signer,
    tmp_path: Path,
) -> None:
    (tmp_path / "mine" / "pages").mkdir(parents=True)
    (tmp_path / "mine" / "pages" / "page.html.j2").write_text(
        "<!doctype html><title>ACME files</title><p>ACME: {{ kind }} {{ row.filename }}</p>\n"
    )
    settings.template_dir = tmp_path / "mine"
    base = await start_server()
    event = await queued(db)
    status, _, text = await page(f"{base}/download/{signer.general(event.id)}")
    assert status == 409 and "ACME: in_progress rapport &lt;2026&gt;.csv" in text


async def test_no_token_in_the_access_log(
    server: str, db: store.Store, signer: tokens.Signer, caplog: pytest.LogCaptureFixture
) -> None:
    event = await queued(db)
    token = signer.general(event.id)
    with caplog.at_level(logging.INFO, logger="aiohttp.access"):
        await page(f"{server}/download/{token}")
        await page(f"{server}/status/{token}")
        await fetch("GET", f"{server}/download/{token}?download=1")
    lines = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
    assert len(lines) == 3
    assert all("/<token>" in line and token not in line for line in lines)
