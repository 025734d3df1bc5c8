"""The security headers as the server sends them, on every kind of response."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp
from multidict import CIMultiDict
from pydantic import SecretStr

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.web import headers

StartServer = Callable[..., Awaitable[str]]


async def _get(url: str) -> tuple[int, CIMultiDict[str]]:
    async with aiohttp.ClientSession() as session:
        async with session.get(url, allow_redirects=False) as response:
            await response.read()
            return response.status, CIMultiDict(response.headers)


def _carries(sent: CIMultiDict[str], expected: dict[str, str]) -> None:
    assert {name: sent.get(name) for name in expected} == expected


async def test_app_responses_carry_the_security_headers(
    start_server: StartServer, database_url: str
) -> None:
    base = await start_server()
    for path, status in [
        ("/healthz", 200),
        ("/download/not-a-token", 400),
        ("/status/not-a-token", 400),
    ]:
        got, sent = await _get(f"{base}{path}")
        assert got == status, path
        _carries(sent, dict(headers.SECURITY_HEADERS))
        assert "X-Frame-Options" not in sent

    # The unhealthy answer too (a closed pool: the database "does not answer").
    pool = await store.create_pool(database_url)
    unhealthy = await start_server(db=store.Store(pool))
    await pool.close()
    got, sent = await _get(f"{unhealthy}/healthz")
    assert got == 503
    _carries(sent, dict(headers.SECURITY_HEADERS))


async def test_console_responses_carry_the_console_headers(
    settings: settings_mod.Settings, start_server: StartServer
) -> None:
    settings.web.admin_password = SecretStr("s3cret-console")
    base = await start_server()
    for path, status in [("/admin/login", 200), ("/admin/api/dead-letters", 401)]:
        got, sent = await _get(f"{base}{path}")
        assert got == status, path
        _carries(sent, dict(headers.CONSOLE_HEADERS))
