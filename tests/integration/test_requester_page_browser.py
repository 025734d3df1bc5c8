"""Real Chromium (Debian's, through Playwright) on the requester's page: the running page
with its progress moving, the ready page, the download checked by sha256, and every other
state. Screenshots are kept in the test's tmp dir (``pytest --basetemp`` to keep them)."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.cli.smtp_sink import SmtpSink, text_body
from bgworker.links import lifecycle, tokens
from tests.browser import MARKS, browser
from tests.helpers import Publish, StartServer, StartWorker, must_match, wait_for_status

pytestmark = MARKS
__all__ = ["browser"]  # the fixture, imported


async def test_emailed_link_running_then_ready_then_download(
    settings: settings_mod.Settings,
    start_server: StartServer,
    start_worker: StartWorker,
    publish: Publish,
    db: store.Store,
    smtp_sink: SmtpSink,
    browser: Any,
    tmp_path: Path,
) -> None:
    base = await start_server()
    settings.web.public_url = base  # the worker signs links to this server
    await start_worker()
    event = await publish(
        "slow",
        {"seconds": 10},
        filename="quarterly report.txt",
        content_type="text/plain",
        requester={"email": "ann@example.com", "timezone": "Europe/Amsterdam"},
    )
    # The email only comes once the file is ready; while it runs, open the link the email
    # will carry (the same function signs it; only the signing time differs).
    early = lifecycle.download_url(base, tokens.Signer(settings.tokens), event.id, None)
    await wait_for_status(db, event.id, "running")
    page = await browser.new_page(viewport={"width": 900, "height": 640})
    await page.goto(early)
    await page.wait_for_selector("main[data-kind=in_progress]")
    assert "Your file is being prepared" in await page.inner_text("h1")
    # A function, not an expression: Playwright evaluates a bare expression with eval(),
    # which the page's Content-Security-Policy (rightly) forbids.
    above = "(v) => { const b = document.getElementById('bar'); return b && b.value > v; }"
    await page.wait_for_function(above, arg=0, timeout=15_000)
    first = await page.eval_on_selector("#bar", "b => b.value")
    # Moving without a reload: the poller updates the bar from the JSON status.
    await page.wait_for_function(above, arg=first, timeout=15_000)
    second = await page.eval_on_selector("#bar", "b => b.value")
    assert 0 < first < second <= 100
    assert (await page.inner_text("#percent")).endswith("%")
    await page.screenshot(path=tmp_path / "running.png")

    # The page reloads itself when the status changes.
    await page.wait_for_selector("main[data-kind=ready]", timeout=30_000)
    await page.screenshot(path=tmp_path / "ready-early-link.png")

    [mail] = await smtp_sink.wait_for(1, timeout=30)
    link = must_match(rf"{base}/download/\S+", text_body(mail)).group(0)
    await page.goto(link)
    assert await page.inner_text("h1") == "Your file is ready"
    assert "quarterly report.txt" in await page.inner_text("#filename")
    await page.screenshot(path=tmp_path / "ready.png")
    async with page.expect_download() as waiting:
        await page.click("#download")
    download = await waiting.value
    assert download.suggested_filename == "quarterly report.txt"
    saved = tmp_path / "downloaded.txt"
    await download.save_as(saved)
    row = await wait_for_status(db, event.id, "ready")
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == row.sha256
    await page.close()


async def test_every_other_state_in_the_browser(
    settings: settings_mod.Settings,
    start_server: StartServer,
    start_worker: StartWorker,
    publish: Publish,
    db: store.Store,
    browser: Any,
    tmp_path: Path,
) -> None:
    settings.web.identity_header = "X-Auth-User"
    base = await start_server()
    await start_worker()
    signer = tokens.Signer(settings.tokens)
    failed = await publish("permanent", filename="export.xlsx", requester={"language": "fr"})
    expired = await publish("blob", {"size": 10}, filename="old.bin", requester={"language": "de"})
    await wait_for_status(db, failed.id, "failed")
    await wait_for_status(db, expired.id, "ready")
    await db.pool.execute(
        "UPDATE bgworker_requests SET expires_at = now() - interval '1 second' WHERE id = $1",
        expired.id,
    )
    cases = {
        "failed": (signer.general(failed.id), "Nous n\u2019avons pas pu créer ce fichier"),
        "expired": (signer.general(expired.id), "Diese Datei ist abgelaufen"),
        "waiting": (signer.general(uuid.uuid4()), "Waiting in the queue"),
        "not_yours": (signer.bound(failed.id, "alice"), "This link belongs to someone else"),
        "invalid": ("not-a-token", "This link is not valid"),
    }
    page = await browser.new_page(viewport={"width": 900, "height": 520})
    for name, (token, heading) in cases.items():
        await page.goto(f"{base}/download/{token}")
        assert await page.inner_text("h1") == heading, name
        await page.screenshot(path=tmp_path / f"{name}.png")
    assert "permanent" not in await page.content()
    await page.close()
