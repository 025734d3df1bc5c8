"""The console's request search and request page: over HTTP, and in real Chromium
including cancel and a replay from the dead-letter queue."""

from __future__ import annotations

import html
import re
import uuid
from pathlib import Path

import aio_pika
import pytest

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.cli.smtp_sink import SmtpSink
from bgworker.contract import events
from bgworker.web import admin_requests
from tests import dlq_handlers
from tests.helpers import (
    Publish,
    StartWorker,
    dead_queue_of,
    get_row,
    insert_request,
    wait_for_status,
)
from tests.integration.console import PASSWORD, basic, client, csrf_token, log_in
from tests.integration.letters import make_letters

pytestmark = pytest.mark.usefixtures("fixable_handler")

CHROMIUM = Path("/usr/bin/chromium")
AUTH = basic("admin", PASSWORD)


async def insert(
    db: store.Store, file_type: str, requester: str | None = None
) -> events.FileRequested:
    who = events.Requester(id=requester, email=f"{requester}@example.com") if requester else None
    event = events.FileRequested(
        id=uuid.uuid4(),
        file_type=file_type,
        criteria={},
        filename=f"{file_type}.csv",
        requester=who,
    )
    await insert_request(db, event, 4)
    return event


async def test_search_filters_and_pages(console: str, db: store.Store) -> None:
    size = admin_requests.PAGE_SIZE
    anns = [await insert(db, "login_events", "ann") for _ in range(size + 3)]
    bob = await insert(db, "invoices", "bob")
    nobody = await insert(db, "invoices")
    async with client() as http:

        async def search(**params: str) -> dict[str, object]:
            url = f"{console}/admin/api/requests/search"
            async with http.get(url, params=params, headers=AUTH) as r:
                assert r.status == 200, await r.text()
                body: dict[str, object] = await r.json()
                return body

        def ids(body: dict[str, object]) -> set[str]:
            rows = body["rows"]
            assert isinstance(rows, list)
            return {row["id"] for row in rows}

        assert ids(await search(id=str(bob.id))) == {str(bob.id)}
        assert ids(await search(requester="bob")) == {str(bob.id)}
        assert ids(await search(requester="bob@example.com")) == {str(bob.id)}
        assert ids(await search(file_type="invoices")) == {str(bob.id), str(nobody.id)}
        assert ids(await search(file_type="invoices", requester="ann")) == set()
        assert ids(await search(status="failed")) == set()
        queued = await search(status="queued")
        assert queued["more"] is True and len(ids(queued)) == size

        first = await search(requester="ann")
        second = await search(requester="ann", page="2")
        assert first["more"] is True and second["more"] is False
        assert ids(first) | ids(second) == {str(e.id) for e in anns}
        assert not ids(first) & ids(second)

        for bad in ({"id": "not-a-uuid"}, {"status": "bogus"}, {"page": "0"}, {"page": "x"}):
            url = f"{console}/admin/api/requests/search"
            async with http.get(url, params=bad, headers=AUTH) as r:
                assert r.status == 400, bad

        # The HTML page pages with links that keep the filters.
        async with http.get(
            f"{console}/admin/requests/search", params={"requester": "ann"}, headers=AUTH
        ) as r:
            page = await r.text()
            assert r.status == 200 and 'id="next"' in page and "requester=ann" in page

        async with http.get(f"{console}/admin/api/requests/{uuid.uuid4()}", headers=AUTH) as r:
            assert r.status == 404 and "not recorded yet" in await r.text()
        async with http.get(f"{console}/admin/requests/nonsense", headers=AUTH) as r:
            assert r.status == 404


async def test_request_page_shows_attempts_effects_and_dead_letter_history(
    console: str,
    settings: settings_mod.Settings,
    db: store.Store,
    amqp: aio_pika.abc.AbstractChannel,
    publish: Publish,
    start_worker: StartWorker,
) -> None:
    await start_worker()
    [request_id] = await make_letters(db, amqp, dead_queue_of(settings), publish, "fixable", 1)
    async with client() as http:
        async with http.get(f"{console}/admin/api/requests/{request_id}", headers=AUTH) as r:
            shown = await r.json()
        assert shown["row"]["status"] == "failed"
        assert "lease_token" not in shown["row"]
        assert [a["outcome"] for a in shown["attempts"]][-1] == "failed"
        assert {e["kind"] for e in shown["effects"]} >= {"event_failed"}
        assert shown["has_letter"] is True and shown["cancellable"] is False

        token = await log_in(http, console)
        dlq_handlers.FIXED["value"] = True
        data = {"csrf": token, "action": f"replay:one:{request_id}"}
        async with http.post(f"{console}/admin/dead-letters/action", data=data) as r:
            assert "<b>replayed</b> 1" in await r.text()
        await wait_for_status(db, request_id, "ready")
        async with http.get(f"{console}/admin/requests/{request_id}") as r:
            page = await r.text()
        assert 'id="dlq-history"' in page and "web:admin" in page
        assert 'id="no-replay"' in page and 'id="replay"' not in page  # the letter is gone


async def test_cancel_needs_the_session_csrf_and_says_what_happened(
    console: str, db: store.Store
) -> None:
    event = await insert(db, "login_events", "ann")
    url = f"{console}/admin/requests/{event.id}/cancel"
    async with client() as http:
        async with http.post(url, data={"csrf": "forged"}, headers=AUTH) as r:
            assert r.status == 403
        assert (await get_row(db, event.id)).status == "queued"
        token = await log_in(http, console)
        async with http.post(url, data={"csrf": token}) as r:
            assert r.status == 200 and 'id="note"' in (page := await r.text())
            assert "Cancelled." in page and csrf_token(page) == token
        assert (await get_row(db, event.id)).status == "cancelled"
        async with http.post(url, data={"csrf": token}) as r:
            assert "Not cancellable in this status." in await r.text()


@pytest.mark.browser
@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="/usr/bin/chromium is missing (apt-get install -y chromium)"
)
async def test_browser_search_request_page_and_cancel(
    console: str, db: store.Store, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright

    target = await insert(db, "login_events", "carol")
    await insert(db, "login_events", "dave")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"],
        )
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 900})
            await page.goto(f"{console}/admin/login")
            await page.fill("input[name=user]", "admin")
            await page.fill("input[name=password]", PASSWORD)
            await page.click("button[type=submit]")
            await page.wait_for_url("**/admin/dead-letters")

            await page.goto(f"{console}/admin/requests")
            await page.click("#find")
            await page.wait_for_url("**/admin/requests/search")
            await page.fill("input[name=requester]", "carol")
            await page.select_option("select[name=status]", "queued")
            await page.click("#search button[type=submit]")
            await page.wait_for_selector("#results")
            results = await page.inner_text("#results")
            assert str(target.id) in results and "dave" not in results
            await page.screenshot(path=tmp_path / "search.png", full_page=True)

            await page.click(f"a[href='/admin/requests/{target.id}']")
            await page.wait_for_url(f"**/admin/requests/{target.id}")
            assert await page.inner_text("#request-status") == "queued"
            assert "nothing to replay" in await page.inner_text("#no-replay")
            await page.click("#cancel")
            await page.wait_for_selector("#note")
            assert await page.inner_text("#note") == "Cancelled."
            assert await page.inner_text("#request-status") == "cancelled"
            assert await page.query_selector("#cancel") is None
            await page.screenshot(path=tmp_path / "request.png", full_page=True)
        finally:
            await browser.close()
    assert (await get_row(db, target.id)).status == "cancelled"
    for name in ("search", "request"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000


async def test_link_revoke_and_resend_from_the_request_page(
    console: str,
    db: store.Store,
    publish: Publish,
    start_worker: StartWorker,
    smtp_sink: SmtpSink,
) -> None:
    """Issue 9 in the console: the same three as `bgworker link`, `revoke`, `resend`."""
    await start_worker()
    event = await publish("blob", {"size": 321}, requester={"email": "ann@example.com"})
    await wait_for_status(db, event.id, "ready")
    await smtp_sink.wait_for(1, timeout=30)
    page_url = f"{console}/admin/requests/{event.id}"

    def issued(page: str) -> str:
        found = re.search(
            r'id="issued-link">Download link: <code>[^<]*(/download/[^<]+)</code>', page
        )
        assert found is not None, page
        return console + html.unescape(found[1])

    async with client() as http:
        token = await log_in(http, console)
        async with http.post(f"{page_url}/link", data={"csrf": token}) as r:
            assert r.status == 200
            first = issued(await r.text())
        async with http.get(first) as r:
            assert r.status == 200 and len(await r.read()) == 321
        async with http.post(f"{page_url}/revoke", data={"csrf": token}) as r:
            assert r.status == 200 and "Every link issued so far is revoked" in await r.text()
        async with http.get(first) as r:
            assert r.status == 410
        async with http.post(f"{page_url}/link", data={"csrf": token}) as r:
            second = issued(await r.text())
        assert second != first
        async with http.get(second) as r:
            assert r.status == 200 and len(await r.read()) == 321
        async with http.post(f"{page_url}/resend", data={"csrf": token}) as r:
            assert "queued to be sent again" in await r.text()
        # The worker's dispatcher sends it: a second email to the requester.
        await smtp_sink.wait_for(2, timeout=30)
        assert [m["To"] for m in smtp_sink.messages] == ["ann@example.com"] * 2
        # Without the session's CSRF token nothing happens.
        async with http.post(f"{page_url}/revoke", data={"csrf": "forged"}) as r:
            assert r.status == 403
