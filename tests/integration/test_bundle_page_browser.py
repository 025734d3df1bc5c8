"""Real Chromium (Debian's, through Playwright) on a bundle's page: parts in progress, then
done with a failed part named, a part downloaded alone and the ZIP downloaded and unzipped.
Screenshots are kept in the test's tmp dir (``pytest --basetemp`` to keep them; the ones in
docs/bundle-page-*.png were made so)."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path
from typing import Any

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.cli.smtp_sink import SmtpSink, text_body
from bgworker.contract import bundles
from bgworker.links import tokens
from bgworker.messaging import publisher
from tests.browser import MARKS, browser
from tests.handlers import blob_bytes
from tests.helpers import AMQP_URL, StartServer, StartWorker, must_match

pytestmark = MARKS
__all__ = ["browser"]  # the fixture, imported


async def test_the_bundle_page_from_in_progress_to_the_zip(
    settings: settings_mod.Settings,
    start_server: StartServer,
    start_worker: StartWorker,
    db: store.Store,
    smtp_sink: SmtpSink,
    browser: Any,
    tmp_path: Path,
) -> None:
    base = await start_server()
    settings.web.public_url = base
    await start_worker()
    bundle = bundles.BundleRequested.model_validate(
        {
            "id": "6b0f3c2e-5d43-4a8e-9a51-3e9c2f0d7b10",
            "description": "Quarterly exports",
            "filename": "q3-exports.zip",
            "requester": {"email": "ann@example.com", "timezone": "Europe/Amsterdam"},
            "parts": [
                {
                    "file_type": "blob",
                    "criteria": {"size": 5000, "seed": 1},
                    "filename": "sales.csv",
                },
                {"file_type": "slow", "criteria": {"seconds": 6}, "filename": "stock.txt"},
                {"file_type": "permanent", "filename": "returns.csv"},
            ],
        }
    )
    async with publisher.Publisher(
        AMQP_URL, namespace=settings.namespace, queue_type=settings.queue_type
    ) as pub:
        await pub.publish_bundle(bundle)
    early = tokens.bundle_url(base, tokens.Signer(settings.tokens).for_bundles().issue(bundle.id))
    page = await browser.new_page(viewport={"width": 900, "height": 560})
    await page.goto(early)
    await page.wait_for_selector("tr[data-status=running]", timeout=15_000)
    assert await page.inner_text("h1") == "Your files are being prepared"
    await page.screenshot(path=tmp_path / "bundle-page-running.png")

    # It reloads itself until every part ended.
    await page.wait_for_selector("main[data-done=true]", timeout=30_000)
    [mail] = await smtp_sink.wait_for(1, timeout=30)
    link = must_match(rf"{base}/bundle/\S+", text_body(mail)).group(0)
    await page.goto(link)
    assert await page.inner_text("h1") == "Your files are done"
    assert "Could not be made" in await page.inner_text("tr[data-status=failed]")
    await page.screenshot(path=tmp_path / "bundle-page-done.png")

    async with page.expect_download() as waiting:
        await page.click("tr[data-status=ready] a.download >> nth=0")
    single = await waiting.value
    assert single.suggested_filename == "sales.csv"
    await single.save_as(tmp_path / "sales.csv")
    assert (tmp_path / "sales.csv").read_bytes() == blob_bytes(5000, 1)

    async with page.expect_download() as waiting:
        await page.click("#zip")
    whole = await waiting.value
    assert whole.suggested_filename == "q3-exports.zip"
    await whole.save_as(tmp_path / "all.zip")
    archive = zipfile.ZipFile(io.BytesIO((tmp_path / "all.zip").read_bytes()))
    assert sorted(archive.namelist()) == ["sales.csv", "stock.txt"]
    rows = {p.filename: p for p in await db.bundles.parts(bundle.id)}
    for name in archive.namelist():
        assert hashlib.sha256(archive.read(name)).hexdigest() == rows[name].sha256
    await page.close()
