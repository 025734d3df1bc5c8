"""The console's login throttle: one count in PostgreSQL for every server process, per
client address as the trusted proxies tell it (``BGWORKER_WEB__TRUSTED_PROXIES``)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr

from bgworker import settings as settings_mod
from bgworker import store
from bgworker import web as web_app
from bgworker.web import admin_auth
from tests.integration.console import PASSWORD, basic, client

API = "/admin/api/requests"


@contextlib.asynccontextmanager
async def server(settings: settings_mod.Settings) -> AsyncIterator[str]:
    """A server as ``serve`` makes it: its own pool to the test's database."""
    settings.web.admin_password = SecretStr(PASSWORD)
    runner = web.AppRunner(web_app.create_app(settings))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def guess(http: aiohttp.ClientSession, base: str, forwarded: str | None = None) -> int:
    """One wrong password through HTTP Basic: 401, or 429 once throttled."""
    headers = basic("admin", "wrong guess")
    if forwarded is not None:
        headers["X-Forwarded-For"] = forwarded
    async with http.get(base + API, headers=headers) as r:
        return r.status


async def test_two_servers_on_one_database_share_the_count(
    settings: settings_mod.Settings,
) -> None:
    async with server(settings) as one, server(settings) as two, client() as http:
        statuses = [await guess(http, (one, two)[i % 2]) for i in range(admin_auth.MAX_FAILURES)]
        assert statuses == [401] * admin_auth.MAX_FAILURES
        # Each server saw fewer than five; together they did.
        assert await guess(http, one) == 429
        assert await guess(http, two) == 429
        async with http.get(two + API, headers=basic("admin", PASSWORD)) as r:
            assert r.status == 429 and 1 <= int(r.headers["Retry-After"]) <= 301


async def test_a_listed_proxy_is_keyed_by_the_forwarded_address(
    settings: settings_mod.Settings,
) -> None:
    settings.web.trusted_proxies = [
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("10.0.0.0/8"),
    ]
    async with server(settings) as base, client() as http:
        for _ in range(admin_auth.MAX_FAILURES):
            assert await guess(http, base, "203.0.113.7") == 401
        assert await guess(http, base, "203.0.113.7") == 429
        # Someone else behind the same proxy is not locked out.
        assert await guess(http, base, "203.0.113.8") == 401
        # What the guesser writes left of what the proxies append changes nothing: the
        # right-most address that is not a listed proxy is the client.
        assert await guess(http, base, "198.51.100.1, 203.0.113.7") == 429
        assert await guess(http, base, "203.0.113.7, 10.1.2.3") == 429
        assert await guess(http, base, "203.0.113.7:51234") == 429  # a port some add
        # Nothing but the proxy's own hop: the proxy itself is the client.
        for _ in range(admin_auth.MAX_FAILURES):
            assert await guess(http, base) == 401
        assert await guess(http, base) == 429
        assert await guess(http, base, "203.0.113.9") == 401


async def test_a_forged_header_from_an_unlisted_peer_is_ignored(
    settings: settings_mod.Settings,
) -> None:
    settings.web.trusted_proxies = [ipaddress.ip_network("10.0.0.0/8")]  # not 127.0.0.1
    async with server(settings) as base, client() as http:
        statuses = [
            await guess(http, base, f"203.0.113.{i}") for i in range(admin_auth.MAX_FAILURES + 1)
        ]
    assert statuses == [401] * admin_auth.MAX_FAILURES + [429]


async def _shift(db: store.Store, seconds: float) -> None:
    """Every recorded failure ``seconds`` older: the window passing, without waiting."""
    await db.pool.execute(
        "UPDATE bgworker_admin_login_failures"
        " SET failed_at = failed_at - make_interval(secs => $1)",
        seconds,
    )


async def _rows(db: store.Store, client: str) -> int:
    count: int = await db.pool.fetchval(
        "SELECT count(*) FROM bgworker_admin_login_failures WHERE client = $1", client
    )
    return count


async def test_the_window_slides_a_success_forgets_and_old_rows_are_pruned(
    db: store.Store,
) -> None:
    throttle = admin_auth.Throttle(limit=5, window=300)
    for _ in range(5):
        await throttle.attempt(db, "a")
    with pytest.raises(admin_auth.ThrottledError) as refused:
        await throttle.attempt(db, "a")
    assert 299 <= refused.value.retry_after <= 301
    assert await _rows(db, "a") == 5  # a refused attempt is not one more failure
    await throttle.attempt(db, "b")  # per client
    await _shift(db, 298)
    with pytest.raises(admin_auth.ThrottledError) as refused:
        await throttle.attempt(db, "a")
    assert 1 <= refused.value.retry_after <= 3
    await _shift(db, 3)
    await throttle.attempt(db, "c")  # anyone's attempt prunes what left the window
    assert (await _rows(db, "a"), await _rows(db, "b")) == (0, 0)
    await throttle.attempt(db, "a")
    await throttle.succeeded(db, "a")
    assert await _rows(db, "a") == 0


async def test_guesses_at_once_on_two_servers_check_the_limit_only(
    settings: settings_mod.Settings,
) -> None:
    # Attempts are taken one at a time per client across processes: of 20 guesses sent at
    # once, exactly the limit get their password checked.
    async with server(settings) as one, server(settings) as two, client() as http:
        statuses = await asyncio.gather(*(guess(http, (one, two)[i % 2]) for i in range(20)))
    assert sorted(statuses) == [401] * admin_auth.MAX_FAILURES + [429] * (
        20 - admin_auth.MAX_FAILURES
    )
