"""What the HTTP server writes about the requests it gets: an access log that never writes a
download token (a token grants a file), and answers to requests aiohttp cannot parse that
neither echo nor log the raw bytes.

The rule does not depend on a route matching: a 404 or a garbled request is logged as well.
``redact`` writes a path segment by segment:

- from the first segment named ``download``, ``status``, ``bundle`` or ``my-files`` (at any
  depth, in any case; ``my-files`` also hides the name of a my-files form's action) the
  rest of the path is ``<token>`` (a bundle's ``/zip`` with it): a link with a doubled
  slash, a proxy's prefix, a stray segment or characters a mail client added still names
  its token there;
- any other segment that holds ``TOKEN_CHARS`` or more characters of a token's alphabet
  (base64url and the dot), counted over the whole decoded segment so that other
  characters mixed in cannot cut it into short runs, is ``<redacted>``: a token's
  signature alone is 27 such characters. Lower-case hexadecimal (request ids, content
  hashes in the console's URLs) is kept: a token's base64url always has other characters.

The method is written only when it is a plain upper-case word (any tchar sequence, a token
too, is a syntactically valid method). The query string is never written.

aiohttp answers a request line or header it cannot parse with a 400 whose body is the
parser's message (it quotes the raw line) and logs it at ERROR with a traceback holding the
same bytes (``web_protocol.RequestHandler.handle_error``). ``Runner`` (an ``AppRunner`` that
``serve`` and the tests use) makes every connection's handler a ``_RequestHandler``, which
answers those with the bare status line's words and logs one DEBUG line naming the error's
class; the access log already has the 400 (as ``UNKNOWN /``).
"""

from __future__ import annotations

import asyncio
import http
import logging
import re
from typing import Any, Final
from urllib.parse import unquote

from aiohttp import web, web_protocol
from aiohttp.abc import AbstractAccessLogger

log = logging.getLogger(__name__)

# Characters of the token alphabet a segment may hold before it is taken for a token.
TOKEN_CHARS: Final = 20
_TOKEN_ALPHABET: Final = re.compile(r"[A-Za-z0-9_.-]")
_HEX: Final = re.compile(r"[0-9a-f-]*")
# The routes whose next segment is a token (web.create_app).
_TOKEN_ROUTES: Final = frozenset({"download", "status", "bundle", "my-files"})
_METHOD: Final = re.compile(r"[A-Z]{1,16}")
# What may appear in a written segment as it is; anything else is percent-encoded, so a
# decoded control character can never start a forged log line.
_PRINTABLE: Final = re.compile(r"[^\x21-\x7e]")


def _looks_like_token(segment: str) -> bool:
    decoded = unquote(segment)
    if _HEX.fullmatch(decoded):
        return False
    return len(_TOKEN_ALPHABET.findall(decoded)) >= TOKEN_CHARS


def redact(path: str) -> str:
    """``path`` (as sent, percent-encoded, without the query) safe to write to a log."""
    segments = path.split("/")
    written: list[str] = []
    for i, segment in enumerate(segments):
        if unquote(segment).lower() in _TOKEN_ROUTES and any(segments[i + 1 :]):
            written += [segment, "<token>"]
            break
        if _looks_like_token(segment):
            written.append("<redacted>")
        else:
            written.append(_PRINTABLE.sub(lambda m: f"%{ord(m[0]):02X}", segment))
    return "/".join(written)


def method(name: str) -> str:
    return name if _METHOD.fullmatch(name) else "<method>"


class RedactingAccessLogger(AbstractAccessLogger):
    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s" %d %s %.3fs',
            request.remote,
            method(request.method),
            redact(request.rel_url.raw_path),
            response.status,
            response.body_length,
            time,
        )


class _RequestHandler(web_protocol.RequestHandler):
    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # 500 (a handler raised) keeps aiohttp's answer: a generic body, and the traceback
        # of our own code logged, whose messages never carry a token (downloads, pages).
        if status == http.HTTPStatus.INTERNAL_SERVER_ERROR:
            return super().handle_error(request, status, exc)
        # Anything else is the parser refusing the bytes (400) or a handler timing out (504).
        # The exception's message quotes the raw line: neither the log nor the body gets it.
        log.debug("request from %s answered %d (%s)", request.remote, status, _kind(exc))
        if request.writer.output_size > 0:  # as aiohttp: a response is under way already
            raise ConnectionError("response already started, cannot send the error answer")
        phrase = http.HTTPStatus(status).phrase
        response = web.Response(status=status, text=f"{status} {phrase}\n")
        response.force_close()
        return response


def _kind(exc: BaseException | None) -> str:
    return type(exc).__name__ if exc is not None else "no exception"


class _Server(web.Server):
    def __call__(self) -> web_protocol.RequestHandler:
        return _RequestHandler(self, loop=self._loop, **self._kwargs)


class Runner(web.AppRunner):
    """``web.AppRunner`` with the redacting access log, whose connections answer requests
    aiohttp cannot parse without echoing them (``_RequestHandler``)."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        super().__init__(app, access_log_class=RedactingAccessLogger, **kwargs)

    async def _make_server(self) -> web.Server:
        # AppRunner builds aiohttp's Server (the app's startup runs there); the same server
        # with one method changed: the protocol factory that makes each connection's handler.
        server = await super()._make_server()
        return _Server(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=asyncio.get_running_loop(),
            **server._kwargs,
        )
