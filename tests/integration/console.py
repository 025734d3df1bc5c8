"""Helpers for the admin console's tests: serve it, log in, read its CSRF tokens."""

from __future__ import annotations

import base64
import contextlib
import re
from collections.abc import AsyncIterator
from typing import Final

import aiohttp
from aiohttp import web
from pydantic import SecretStr

from bgworker import settings as settings_mod
from bgworker import store
from bgworker import web as web_app
from tests.helpers import must_match

PASSWORD: Final = "correct horse battery"
CSRF_RE: Final = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_token(html: str) -> str:
    return must_match(CSRF_RE, html)[1]


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def client() -> aiohttp.ClientSession:
    # unsafe=True: keep cookies set by an IP-address host (127.0.0.1).
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


@contextlib.asynccontextmanager
async def serving(
    settings: settings_mod.Settings, db: store.Store, port: int, password: str = PASSWORD
) -> AsyncIterator[str]:
    """The app (downloads + admin) on a local port; yields its base URL."""
    settings.web.admin_password = SecretStr(password)
    runner = web.AppRunner(web_app.create_app(settings, db=db))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def log_in(http: aiohttp.ClientSession, base: str, password: str = PASSWORD) -> str:
    """Log in through the form; returns the session's CSRF token (from a page)."""
    async with http.get(f"{base}/admin/login") as r:
        token = csrf_token(await r.text())
    form = {"csrf": token, "user": "admin", "password": password}
    async with http.post(f"{base}/admin/login", data=form, allow_redirects=False) as r:
        assert r.status == 303, await r.text()
    async with http.get(f"{base}/admin/requests") as r:
        assert r.status == 200
        return csrf_token(await r.text())
