"""The admin console's sessions as OWASP's session guidance asks: nothing signed with the
password is accepted, guessing is throttled, logout and a password change end sessions,
cookies can be forced Secure."""

from __future__ import annotations

from http.cookies import SimpleCookie

import itsdangerous
import pytest

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.web import admin_auth
from tests.integration.console import PASSWORD, basic, client, csrf_token, log_in, serving

API = "/admin/api/requests"


async def test_a_cookie_or_csrf_value_signed_with_the_password_is_refused(
    settings: settings_mod.Settings, db: store.Store, unused_tcp_port: int
) -> None:
    async with serving(settings, db, unused_tcp_port) as base, client() as http:
        # A session cookie forged with the password, as the console used to sign them.
        for salt in ("bgworker.admin.session", "bgworker.admin.login-csrf"):
            forged = itsdangerous.URLSafeTimedSerializer(PASSWORD, salt=salt).dumps(
                {"u": "admin", "n": "x"}
            )
            async with http.get(base + API, cookies={admin_auth.SESSION_COOKIE: forged}) as r:
                assert r.status == 401

        # The public login page's token cannot be checked with the password offline.
        async with http.get(f"{base}/admin/login") as r:
            page_token = csrf_token(await r.text())
        for salt in ("bgworker.admin.csrf", "bgworker.admin.login-csrf"):
            with pytest.raises(itsdangerous.BadSignature):
                itsdangerous.URLSafeTimedSerializer(PASSWORD, salt=salt).loads(
                    page_token, salt="form"
                )
            with pytest.raises(itsdangerous.BadSignature):
                itsdangerous.URLSafeSerializer(PASSWORD, salt=salt).loads(page_token)

        # A login CSRF pair (cookie + form field) signed with the password: refused even
        # with the right password, in the old scheme and in today's with the password as key.
        nonce = "attacker-chosen"
        old_cookie = itsdangerous.URLSafeTimedSerializer(
            PASSWORD, salt="bgworker.admin.session"
        ).dumps(nonce)
        old_token = itsdangerous.URLSafeSerializer(PASSWORD, salt="bgworker.admin.csrf").dumps(
            nonce
        )
        new = itsdangerous.URLSafeTimedSerializer(PASSWORD, salt="bgworker.admin.login-csrf")
        pairs = [
            (old_cookie, old_token),
            (new.dumps(nonce, salt="cookie"), new.dumps(nonce, salt="form")),
        ]
        for cookie, token in pairs:
            async with client() as fresh:
                form = {"csrf": token, "user": "admin", "password": PASSWORD}
                async with fresh.post(
                    f"{base}/admin/login",
                    data=form,
                    cookies={admin_auth.LOGIN_COOKIE: cookie},
                    allow_redirects=False,
                ) as r:
                    assert r.status == 403
                    assert admin_auth.SESSION_COOKIE not in r.cookies


async def test_the_tenth_wrong_password_in_a_row_gets_429(
    settings: settings_mod.Settings, db: store.Store, unused_tcp_port: int
) -> None:
    async with serving(settings, db, unused_tcp_port) as base, client() as http:
        statuses = []
        retry_after = []
        for attempt in range(10):
            if attempt % 2:  # through HTTP Basic
                async with http.get(base + API, headers=basic("admin", f"guess{attempt}")) as r:
                    statuses.append(r.status)
                    retry_after.append(r.headers.get("Retry-After"))
                continue
            async with http.get(f"{base}/admin/login") as r:  # through the form
                token = csrf_token(await r.text())
            form = {"csrf": token, "user": "admin", "password": f"guess{attempt}"}
            async with http.post(f"{base}/admin/login", data=form, allow_redirects=False) as r:
                statuses.append(r.status)
                retry_after.append(r.headers.get("Retry-After"))
        assert statuses[:5] == [401] * 5
        assert statuses[5:] == [429] * 5
        assert statuses[9] == 429
        window = admin_auth.FAILURE_WINDOW_SECONDS
        for value in retry_after[5:]:
            assert value is not None and 1 <= int(value) <= window + 1

        # Locked out: the right password waits too (or guessing would go on).
        async with http.get(base + API, headers=basic("admin", PASSWORD)) as r:
            assert r.status == 429
        async with http.get(f"{base}/admin/login") as r:
            token = csrf_token(await r.text())
        form = {"csrf": token, "user": "admin", "password": PASSWORD}
        async with http.post(f"{base}/admin/login", data=form, allow_redirects=False) as r:
            assert r.status == 429


async def test_after_logout_the_old_cookie_gets_401(
    settings: settings_mod.Settings, db: store.Store, unused_tcp_port: int
) -> None:
    async with serving(settings, db, unused_tcp_port) as base:
        async with client() as http:
            token = await log_in(http, base)
            [cookie] = [c for c in http.cookie_jar if c.key == admin_auth.SESSION_COOKIE]
            old = {admin_auth.SESSION_COOKIE: cookie.value}
            async with http.get(base + API) as r:
                assert r.status == 200
            async with http.post(
                f"{base}/admin/logout", data={"csrf": token}, allow_redirects=False
            ) as r:
                assert r.status == 303
        async with client() as other:  # the old cookie, replayed from elsewhere
            async with other.get(base + API, cookies=old) as r:
                assert r.status == 401


async def test_a_password_change_ends_every_session_and_a_restart_does_not(
    settings: settings_mod.Settings, db: store.Store, unused_tcp_port: int
) -> None:
    async with serving(settings, db, unused_tcp_port) as base, client() as http:
        await log_in(http, base)
        [cookie] = [c for c in http.cookie_jar if c.key == admin_auth.SESSION_COOKIE]
    old = {admin_auth.SESSION_COOKIE: cookie.value}
    # Restarted with the same password: the session (server-side) lives on.
    async with serving(settings, db, unused_tcp_port) as base, client() as http:
        async with http.get(base + API, cookies=old) as r:
            assert r.status == 200
    # Restarted with a new password: every session ended, the new password works.
    async with serving(settings, db, unused_tcp_port, "new password!") as base, client() as http:
        async with http.get(base + API, cookies=old) as r:
            assert r.status == 401
        async with http.get(base + API, headers=basic("admin", "new password!")) as r:
            assert r.status == 200


async def test_secure_cookies_can_be_forced_behind_a_tls_proxy(
    settings: settings_mod.Settings, db: store.Store, unused_tcp_port: int
) -> None:
    async def login_cookie_flags() -> bool:
        async with serving(settings, db, unused_tcp_port) as base, client() as http:
            async with http.get(f"{base}/admin/login") as r:
                parsed = SimpleCookie()
                for header in r.headers.getall("Set-Cookie"):
                    parsed.load(header)
                return bool(parsed[admin_auth.LOGIN_COOKIE]["secure"])

    assert not await login_cookie_flags()  # plain HTTP, no proxy setting
    settings.web.admin_secure_cookies = True
    assert await login_cookie_flags()
