"""The admin console: access control, CSRF, JSON endpoints, and a real headless browser."""

from __future__ import annotations

import uuid
from pathlib import Path

import aio_pika
import aiohttp
import pytest
from aiohttp import web

from bgworker import settings as settings_mod
from bgworker import store
from bgworker import web as web_app
from bgworker.messaging import broker
from bgworker.ops.deadletters import queue, reading
from tests import dlq_handlers
from tests.helpers import Publish, StartWorker, dead_queue_of, get_row, wait_for_status
from tests.integration.console import PASSWORD, basic, client, csrf_token, log_in
from tests.integration.letters import depth, make_letters

pytestmark = pytest.mark.usefixtures("fixable_handler")

CHROMIUM = Path("/usr/bin/chromium")


async def test_console_is_absent_without_a_password(
    settings: settings_mod.Settings, db: store.Store, unused_tcp_port: int
) -> None:
    runner = web.AppRunner(web_app.create_app(settings, db=db))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    try:
        async with aiohttp.ClientSession() as http:
            for path in ("/admin/", "/admin/login", "/admin/api/dead-letters"):
                async with http.get(f"http://127.0.0.1:{unused_tcp_port}{path}") as r:
                    assert r.status == 404
    finally:
        await runner.cleanup()


# Written out, not read from bgworker.web: a change to what the console sends must fail here.
CONSOLE_SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
}


async def test_console_security_headers(console: str) -> None:
    """As sent over HTTP on the console's pages and API, to a user and to nobody."""
    async with client() as http:
        for path, request_headers, expected in [
            ("/admin/login", {}, 200),
            ("/admin/api/requests", {}, 401),
            ("/admin/api/requests", basic("admin", PASSWORD), 200),
            ("/admin/requests", basic("admin", PASSWORD), 200),
        ]:
            async with http.get(f"{console}{path}", headers=request_headers) as r:
                assert r.status == expected, path
                sent = {name: r.headers.get(name) for name in CONSOLE_SECURITY_HEADERS}
                assert sent == CONSOLE_SECURITY_HEADERS, (r.status, path)


async def test_no_access_without_the_credential(
    console: str, settings: settings_mod.Settings
) -> None:
    forged = {"bgworker_admin": "eyJ1IjoiYWRtaW4iLCJuIjoieCJ9.forged.sig"}
    async with client() as http:
        for path in ("/admin/", "/admin/dead-letters", "/admin/requests", "/admin/dead-letters/x"):
            async with http.get(console + path, allow_redirects=False) as r:
                assert r.status == 303 and r.headers["Location"] in (
                    "/admin/login",
                    "/admin/dead-letters",
                )
        async with http.get(f"{console}/admin/dead-letters", allow_redirects=False) as r:
            assert r.headers["Location"] == "/admin/login"
        async with http.get(
            f"{console}/admin/dead-letters", cookies=forged, allow_redirects=False
        ) as r:
            assert r.status == 303
        async with http.get(f"{console}/admin/api/dead-letters") as r:
            assert r.status == 401 and "Basic" in r.headers["WWW-Authenticate"]
        wrong = basic("admin", "nope")
        async with http.get(f"{console}/admin/api/requests", headers=wrong) as r:
            assert r.status == 401
        async with http.post(f"{console}/admin/dead-letters/action", data={"action": "x"}) as r:
            assert r.status in (303, 200) and "Log in" in await r.text()
        right = basic("admin", PASSWORD)
        async with http.get(f"{console}/admin/api/requests", headers=right) as r:
            assert r.status == 200 and "rows" in await r.json()
        # Wrong password through the form: refused, no session cookie.
        async with http.get(f"{console}/admin/login") as r:
            token = csrf_token(await r.text())
        form = {"csrf": token, "user": "admin", "password": "guess"}
        async with http.post(f"{console}/admin/login", data=form, allow_redirects=False) as r:
            assert r.status == 401 and "Wrong user or password" in await r.text()
        async with http.get(f"{console}/admin/requests", allow_redirects=False) as r:
            assert r.status == 303


async def test_posts_without_csrf_token_are_rejected(
    console: str,
    settings: settings_mod.Settings,
    db: store.Store,
    amqp: aio_pika.abc.AbstractChannel,
    publish: Publish,
    start_worker: StartWorker,
) -> None:
    await start_worker()
    [request_id] = await make_letters(db, amqp, dead_queue_of(settings), publish, "fixable", 1)
    dlq_handlers.FIXED["value"] = True
    dead = dead_queue_of(settings)
    async with client() as http:
        # The login form itself needs its token.
        form = {"user": "admin", "password": PASSWORD}
        async with http.post(f"{console}/admin/login", data=form, allow_redirects=False) as r:
            assert r.status == 403
        token = await log_in(http, console)
        action = {"action": f"replay:one:{request_id}"}
        for data in (action, {**action, "csrf": "forged"}, {**action, "csrf": token + "x"}):
            async with http.post(f"{console}/admin/dead-letters/action", data=data) as r:
                assert r.status == 403
        # Basic credentials cannot POST (a browser would replay them cross-site).
        async with aiohttp.ClientSession() as plain:
            auth = basic("admin", PASSWORD)
            async with plain.post(
                f"{console}/admin/dead-letters/action", data={**action, "csrf": token}, headers=auth
            ) as r:
                assert r.status == 403
        assert await depth(amqp, dead) == 1
        assert (await get_row(db, request_id)).status == "failed"

        # With the token, the same POST replays.
        async with http.post(
            f"{console}/admin/dead-letters/action", data={**action, "csrf": token}
        ) as r:
            assert r.status == 200
            assert "<b>replayed</b> 1" in await r.text()
        await wait_for_status(db, request_id, "ready")
        assert await depth(amqp, dead) == 0


async def test_json_endpoints_and_purge_confirmation(
    console: str,
    settings: settings_mod.Settings,
    db: store.Store,
    amqp: aio_pika.abc.AbstractChannel,
    publish: Publish,
    start_worker: StartWorker,
) -> None:
    await start_worker()
    dead = dead_queue_of(settings)
    ids = await make_letters(db, amqp, dead, publish, "permanent", 2)
    auth = basic("admin", PASSWORD)
    async with client() as http:
        async with http.get(f"{console}/admin/api/dead-letters/stats", headers=auth) as r:
            assert (await r.json())["total"] == 2
        async with http.get(
            f"{console}/admin/api/dead-letters",
            params={"error_class": "PermanentError"},
            headers=auth,
        ) as r:
            body = await r.json()
            assert sorted(x["key"] for x in body["letters"]) == sorted(map(str, ids))
        async with http.get(f"{console}/admin/api/dead-letters/{ids[0]}", headers=auth) as r:
            letter = await r.json()
            assert letter["payload"]["id"] == str(ids[0])
            assert letter["request"]["status"] == "failed"
            assert "criteria make no sense" in letter["traceback"]
        async with http.get(f"{console}/admin/api/dead-letters/{uuid.uuid4()}", headers=auth) as r:
            assert r.status == 404
        async with http.get(f"{console}/admin/api/requests?status=failed", headers=auth) as r:
            assert {x["id"] for x in (await r.json())["rows"]["failed"]} == set(map(str, ids))
        assert await depth(amqp, dead) == 2  # reads changed nothing

        token = await log_in(http, console)
        data = {"csrf": token, "action": "purge:group:PermanentError"}
        async with http.post(f"{console}/admin/dead-letters/action", data=data) as r:
            page = await r.text()
            assert "Purge 2 dead letter(s)?" in page
        assert await depth(amqp, dead) == 2  # asking is not doing
        async with http.post(
            f"{console}/admin/dead-letters/action", data={**data, "confirm": "yes"}
        ) as r:
            assert "<b>purged</b> 2" in await r.text()
        assert await depth(amqp, dead) == 0


@pytest.mark.browser
@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="/usr/bin/chromium is missing (apt-get install -y chromium)"
)
async def test_browser_login_view_replay(
    console: str,
    settings: settings_mod.Settings,
    db: store.Store,
    amqp: aio_pika.abc.AbstractChannel,
    publish: Publish,
    start_worker: StartWorker,
    tmp_path: Path,
) -> None:
    from playwright.async_api import async_playwright

    await start_worker()
    dead = dead_queue_of(settings)
    ids = await make_letters(db, amqp, dead, publish, "fixable", 2)
    await make_letters(db, amqp, dead, publish, "permanent", 1)
    target = str(ids[0])

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 900})
            await page.goto(f"{console}/admin/")
            assert page.url.endswith("/admin/login")
            await page.fill("input[name=user]", "admin")
            await page.fill("input[name=password]", PASSWORD)
            await page.click("button[type=submit]")
            await page.wait_for_url("**/admin/dead-letters")
            text = await page.inner_text("main")
            assert "ExportBugError" in text and "PermanentError" in text and target in text
            await page.screenshot(path=tmp_path / "dead-letters.png", full_page=True)

            await page.click(f"a[href='/admin/dead-letters/{target}']")
            await page.wait_for_url(f"**/admin/dead-letters/{target}")
            text = await page.inner_text("main")
            assert "bug in the export" in text and "Traceback" in text
            assert await page.inner_text("#request-status") == "failed"
            await page.screenshot(path=tmp_path / "letter.png", full_page=True)

            dlq_handlers.FIXED["value"] = True  # deploy the fix, then replay from the page
            await page.click("button[value^='replay:one:']")
            await page.wait_for_selector("#outcome-summary")
            summary = await page.inner_text("#outcome-summary")
            assert "replayed 1" in summary and "removed from the queue 1" in summary
            await page.screenshot(path=tmp_path / "outcome.png", full_page=True)

            await wait_for_status(db, ids[0], "ready")
            await page.goto(f"{console}/admin/requests?status=ready")
            assert target in await page.inner_text("main")
            await page.screenshot(path=tmp_path / "requests.png", full_page=True)
        finally:
            await browser.close()

    async with queue.DeadLetterQueue(
        settings.amqp_url.get_secret_value(), settings.namespace, settings.queue_type
    ) as q:
        left = [letter.key async for letter in reading.matching(q)]
    assert target not in left and len(left) == 2
    assert await broker.queue_depth(amqp, dead) == 2
    for name in ("dead-letters", "letter", "outcome", "requests"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000
    print(f"screenshots in {tmp_path}")
