"""Who may use the admin console, and CSRF protection for its POSTs.

A login form sets a session cookie signed with itsdangerous (key: the admin password, so a
password change ends every session). Scripts may instead send HTTP Basic credentials, for
GETs. Every POST must carry a CSRF token: a signature over the session's random nonce
(for the login form, over a nonce in a short-lived pre-login cookie), so a page on another
site can neither read nor forge it. Cookies are HttpOnly and SameSite=Strict on top.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, Final

import itsdangerous
from aiohttp import web

from bgworker.web import headers, responses

SESSION_COOKIE: Final = "bgworker_admin"
LOGIN_COOKIE: Final = "bgworker_admin_login"
COOKIE_PATH: Final = "/admin"
LOGIN_MAX_AGE: Final = 3600


class Auth:
    def __init__(self, user: str, password: str, session_seconds: int) -> None:
        self.user = user
        self._password = password
        self.session_seconds = session_seconds
        self._sessions = itsdangerous.URLSafeTimedSerializer(
            password, salt="bgworker.admin.session"
        )
        self._csrf = itsdangerous.URLSafeSerializer(password, salt="bgworker.admin.csrf")

    def check_password(self, user: str, password: str) -> bool:
        # Both compared in constant time, and both always compared.
        ok_user = hmac.compare_digest(user.encode(), self.user.encode())
        ok_password = hmac.compare_digest(password.encode(), self._password.encode())
        return ok_user and ok_password

    # -- session ------------------------------------------------------------------------

    def new_session(self, response: web.StreamResponse, request: web.Request) -> None:
        value = self._sessions.dumps({"u": self.user, "n": secrets.token_urlsafe(16)})
        self._set_cookie(response, request, SESSION_COOKIE, value, self.session_seconds)
        response.del_cookie(LOGIN_COOKIE, path=COOKIE_PATH)

    def end_session(self, response: web.StreamResponse) -> None:
        response.del_cookie(SESSION_COOKIE, path=COOKIE_PATH)

    def _session(self, request: web.Request) -> dict[str, Any] | None:
        raw = request.cookies.get(SESSION_COOKIE)
        if not raw:
            return None
        try:
            data = self._sessions.loads(raw, max_age=self.session_seconds)
        except itsdangerous.BadData:
            return None
        if not isinstance(data, dict) or data.get("u") != self.user:
            return None
        return data

    def _basic_user(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return user if self.check_password(user, password) else None

    def user_of(self, request: web.Request) -> tuple[str | None, bool]:
        """(user, via session cookie) or (None, False) when not authenticated."""
        session = self._session(request)
        if session is not None:
            return str(session["u"]), True
        return self._basic_user(request), False

    # -- CSRF ---------------------------------------------------------------------------

    def login_nonce(self, request: web.Request, response: web.StreamResponse | None) -> str:
        """The pre-login nonce (made, and set on ``response``, when there is none)."""
        raw = request.cookies.get(LOGIN_COOKIE)
        if raw:
            try:
                return str(self._sessions.loads(raw, max_age=LOGIN_MAX_AGE))
            except itsdangerous.BadData:
                pass
        nonce = secrets.token_urlsafe(16)
        if response is not None:
            value = self._sessions.dumps(nonce)
            self._set_cookie(response, request, LOGIN_COOKIE, value, LOGIN_MAX_AGE)
        return nonce

    def csrf_token(self, nonce: str) -> str:
        return str(self._csrf.dumps(nonce))

    def session_csrf(self, request: web.Request) -> str | None:
        session = self._session(request)
        return None if session is None else self.csrf_token(str(session["n"]))

    def csrf_ok(self, token: str | None, nonce: str | None) -> bool:
        if not token or not nonce:
            return False
        try:
            signed = self._csrf.loads(token)
        except itsdangerous.BadData:
            return False
        return isinstance(signed, str) and hmac.compare_digest(signed, nonce)

    def session_nonce(self, request: web.Request) -> str | None:
        session = self._session(request)
        return None if session is None else str(session["n"])

    @staticmethod
    def _set_cookie(
        response: web.StreamResponse, request: web.Request, name: str, value: str, age: int
    ) -> None:
        response.set_cookie(
            name,
            value,
            max_age=age,
            path=COOKIE_PATH,
            httponly=True,
            samesite="Strict",
            secure=request.secure,
        )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def middleware(auth: Auth, open_paths: frozenset[str]) -> Any:
    """Everything under /admin/ needs a user; every POST needs a valid CSRF token."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await _guarded(request, handler)
        response.headers.update(headers.CONSOLE_HEADERS)
        return response

    async def _guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in open_paths:
            return await handler(request)
        user, via_session = auth.user_of(request)
        if user is None:
            if "/api/" in request.path:
                return responses.json_response(
                    {"error": "authentication required"},
                    status=401,
                    headers={"WWW-Authenticate": 'Basic realm="bgworker admin"'},
                )
            raise web.HTTPSeeOther(f"{COOKIE_PATH}/login")
        if request.method == "POST":
            form = await request.post()
            token = form.get("csrf")
            nonce = auth.session_nonce(request) if via_session else None
            if not auth.csrf_ok(token if isinstance(token, str) else None, nonce):
                return web.Response(status=403, text="403: missing or invalid CSRF token")
        return await handler(request)

    return guard
