"""Real Chromium (Debian's, through Playwright) on the requester's "my files" page: asking
for the link by address, the list with a file being built (its bar moving), download
checked by sha256, resend and cancel through the page's forms under its CSP. Screenshots go
to the test's tmp dir (``pytest --basetemp`` keeps them; docs/my-files.png is one)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.cli.smtp_sink import SmtpSink, text_body
from bgworker.links import tokens
from tests.browser import MARKS, browser
from tests.helpers import Publish, StartServer, StartWorker, must_match, wait_for_status
from tests.integration import test_my_files_sections as sections

pytestmark = MARKS
__all__ = ["browser"]  # the fixture, imported


async def test_ask_list_download_resend_cancel_in_the_browser(
    settings: settings_mod.Settings,
    start_server: StartServer,
    start_worker: StartWorker,
    publish: Publish,
    db: store.Store,
    smtp_sink: SmtpSink,
    browser: Any,
    tmp_path: Path,
) -> None:
    settings.web.my_files_mail_interval_seconds = 0
    base = await start_server()
    settings.web.public_url = base
    await start_worker()
    ann = {"email": "ann@example.com", "timezone": "Europe/Amsterdam"}
    ready = await publish(
        "blob",
        {"size": 20_000, "seed": 7},
        filename="quarterly report.csv",
        description="Sales, Q3",
        requester=ann,
    )
    failed = await publish("permanent", filename="export.xlsx", requester=ann)
    row = await wait_for_status(db, ready.id, "ready")
    await wait_for_status(db, failed.id, "failed")
    await smtp_sink.wait_for(2, timeout=30)  # the ready and the failed email
    slow = await publish("slow", {"seconds": 60}, filename="all orders.csv", requester=ann)
    await wait_for_status(db, slow.id, "running")

    page = await browser.new_page(viewport={"width": 900, "height": 760})
    await page.goto(f"{base}/my-files")
    await page.fill("input[name=email]", "ann@example.com")
    await page.click("button[type=submit]")
    await page.wait_for_selector("main[data-kind=asked]")
    mail = (await smtp_sink.wait_for(3, timeout=30))[2]
    link = must_match(rf"{base}/my-files/\S+", text_body(mail)).group(0)

    await page.goto(link)
    states = await page.eval_on_selector_all("li[data-id]", "l => l.map(e => e.dataset.state)")
    assert states == ["running", "failed", "ready"]  # newest first
    # The poller moves the running file's bar without a reload.
    bar = f"bar-{slow.id}"
    above = "([id, v]) => { const b = document.getElementById(id); return b && b.value > v; }"
    await page.wait_for_function(above, arg=[bar, 0], timeout=20_000)
    first = await page.eval_on_selector(f"#{bar}", "b => b.value")
    await page.wait_for_function(above, arg=[bar, first], timeout=20_000)
    await page.screenshot(path=tmp_path / "my-files.png", full_page=True)

    async with page.expect_download() as waiting:
        await page.click(f"#file-{ready.id} a.download")
    download = await waiting.value
    assert download.suggested_filename == "quarterly report.csv"
    saved = tmp_path / "downloaded.csv"
    await download.save_as(saved)
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == row.sha256

    await page.click(f"#file-{ready.id} button.resend")
    await page.wait_for_selector("#note[data-note=resent]")
    resent = (await smtp_sink.wait_for(4, timeout=30))[3]
    assert "quarterly report.csv" in str(resent["Subject"])

    await page.click(f"#file-{slow.id} button.cancel")
    await page.wait_for_selector("#note[data-note=cancelling]")
    # The page reloads itself when the running request ends as cancelled.
    await page.wait_for_selector(f"#file-{slow.id}[data-state=cancelled]", timeout=30_000)
    await wait_for_status(db, slow.id, "cancelled")
    await page.screenshot(path=tmp_path / "my-files-after-cancel.png", full_page=True)
    await page.close()


async def test_a_bundle_link_and_end_a_schedule_in_the_browser(
    settings: settings_mod.Settings,
    start_server: StartServer,
    start_worker: StartWorker,
    db: store.Store,
    smtp_sink: SmtpSink,
    browser: Any,
    tmp_path: Path,
) -> None:
    """The bundles and schedules sections: the bundle's link opens its page, and "End this
    schedule" posts from the page (Chromium's own Origin and Sec-Fetch-Site) and ends it."""
    base = await start_server()
    settings.web.public_url = base
    await start_worker()
    bundle_id = await sections._bundle(settings, db, "ann@example.com")
    schedule_id = await sections._schedule(db, "ann@example.com", "Weekly stock <b>report</b>")
    link = tokens.Signer(settings.tokens).my_files("ann@example.com")

    page = await browser.new_page(viewport={"width": 900, "height": 900})
    await page.goto(f"{base}/my-files/{link}")
    assert await page.inner_text(f"#bundle-{bundle_id} .parts") == "Files done: 2 of 2"
    name = await page.inner_text(f"#schedule-{schedule_id} .name")
    assert name == "Weekly stock <b>report</b>"  # shown as text, not markup
    await page.screenshot(path=tmp_path / "my-files-sections.png", full_page=True)
    await page.click(f"#schedule-{schedule_id} button.end-schedule")
    await page.wait_for_selector("#note[data-note=schedule-ended]")
    assert await page.query_selector(f"#schedule-{schedule_id}") is None
    ended = await db.schedules.get(schedule_id)
    assert ended is not None and (ended.status, ended.ended_reason) == ("ended", "unsubscribed")

    await page.click(f"#bundle-{bundle_id} a.bundle-link")
    await page.wait_for_selector("a.download")
    assert await page.eval_on_selector_all("a.download", "l => l.length") == 2
    await page.close()
