"""No token in a log line or an error body, however a request is spelt: raw bytes over a
socket to ``serve`` itself (the way the CLI runs the server), 404 paths with a token in odd
places, request lines aiohttp cannot parse (bytes that are not UTF-8, emoji, over-long
lines, bad methods and headers), and hypothesis' own hostile requests."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote

import pytest
from hypothesis import Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from pydantic import SecretStr

from bgworker import settings as settings_mod
from bgworker import web as web_app
from bgworker.links import tokens
from tests.helpers import wait_until

# How long one exchange waits for the server's answer: a request the server still waits
# on (hypothesis may cut one short) is dropped by closing the socket after this.
READ_SECONDS: Final = 2.0
# A refusal, or the console sending an anonymous caller to its login page (303). aiohttp's
# Python parser (AIOHTTP_NO_EXTENSIONS) echoes any HTTP/x.y version in its status line.
REFUSED: Final = re.compile(rb"HTTP/\d\.\d [34]\d\d ")


async def exchange(port: int, data: bytes) -> bytes:
    """Write ``data`` as it is and read the answer until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    chunks: list[bytes] = []
    try:
        # The server may refuse and close before it read everything (a reset).
        with contextlib.suppress(ConnectionError, TimeoutError):
            writer.write(data)
            await writer.drain()
            async with asyncio.timeout(READ_SECONDS):
                while chunk := await reader.read(65536):
                    chunks.append(chunk)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return b"".join(chunks)


@dataclass
class Serving:
    port: int
    stop: asyncio.Event
    task: asyncio.Task[None]

    async def stopped(self) -> None:
        """Stop ``serve``: every request in flight is answered and logged by then."""
        self.stop.set()
        await asyncio.wait_for(self.task, 60)


@pytest.fixture
async def serving(
    settings: settings_mod.Settings, unused_tcp_port: int, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[Serving]:
    """``serve`` with the console mounted, on a real port; every logger captured."""
    caplog.set_level(logging.DEBUG)
    settings.web.host, settings.web.port = "127.0.0.1", unused_tcp_port
    settings.web.admin_password = SecretStr("correct horse battery staple")
    stop = asyncio.Event()
    task = asyncio.create_task(web_app.serve(settings, stop), name="test-serve")

    async def up() -> bool:
        if task.done():
            task.result()
        try:
            answer = await exchange(unused_tcp_port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        except ConnectionRefusedError:  # not listening yet
            return False
        return answer.startswith(b"HTTP/1.1 200")

    serving = Serving(unused_tcp_port, stop, task)
    try:
        await wait_until(up)
        yield serving
    finally:
        await serving.stopped()


def secrets_of(*tokens_: str) -> list[bytes]:
    """What must never be written: each token, and its signature on its own."""
    return [s.encode() for t in tokens_ for s in (t, t.rsplit(".", 1)[-1])]


def assert_nothing_logged(caplog: pytest.LogCaptureFixture, secrets: list[bytes]) -> None:
    records = "\n".join(r.getMessage() for r in caplog.records)
    everything = (records + caplog.text).encode("utf-8", "backslashreplace")
    for secret in secrets:
        assert secret not in everything


def odd_requests(token: str) -> list[bytes]:
    t = token.encode()
    encoded = "".join(f"%{ord(c):02X}" for c in token).encode()
    lines = [
        # Valid requests, 404: a token in a place no route matches.
        b"GET /download//" + t,
        b"GET /download/x/" + t,
        b"GET /status//" + t,
        b"GET //download/" + t,
        b"GET /files/download/" + t,
        b"GET /DOWNLOAD/" + t,
        b"GET /" + t,
        b"GET /admin/" + t,
        b"GET /x;" + t + b"/y",
        b"GET /" + encoded,
        b"GET /download/" + t + b"/extra",
        b"GET /download/" + t + b"%0A127.0.0.1 forged",
        # The token as the method: a valid one for aiohttp's Python parser (any tchar
        # sequence: 405 or 404, logged as <method>), a 400 for its C parser (llhttp).
        t + b" /download",
        t + b" /healthz",
    ]
    garbled = [
        # Request lines aiohttp cannot parse.
        b"GET /download/" + t + "😀".encode(),
        b"GET /download/" + t + b"\xff\xfe",
        b"GET /\xc3(" + t,
        b"G\x00T /download/" + t,
        b"GET\t/download/" + t,
        b"GET /download/" + t + b" HTTP/9.9\r\nHost: x",
        b"GET /download/x " + t,
        b"GET /download/" + t + b"A" * 9000,
        b"GET /download/" + t + b"\x7f",
        # Bad headers.
        b"GET /healthz HTTP/1.1\r\nX-" + t + b": \x01",
        b"GET /healthz HTTP/1.1\r\n" + t,
        b"GET /healthz HTTP/1.1\r\nHost: " + t + b"\x00",
        b"GET /healthz HTTP/1.1\r\nX-Long: " + t + b"B" * 9000,
        b"GET /healthz HTTP/1.1\r\nContent-Length: " + t,
        b"GET /healthz HTTP/1.1\r\nTransfer-Encoding: " + t,
        b"GET /healthz HTTP/1.1\r\n " + t,
    ]
    end = b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    return [line + end for line in lines] + [line + b"\r\n\r\n" for line in garbled]


async def test_odd_paths_and_garbled_requests_leak_no_token(
    serving: Serving, signer: tokens.Signer, caplog: pytest.LogCaptureFixture
) -> None:
    general, bound = signer.general(uuid.uuid4()), signer.bound(uuid.uuid4(), "alice")
    secrets = secrets_of(general, bound)
    for token in (general, bound):
        for request in odd_requests(token):
            answer = await exchange(serving.port, request)
            # Answered and refused: the property below is not vacuous.
            assert REFUSED.match(answer), (request[:60], answer[:60])
            assert all(secret not in answer for secret in secrets), (request[:60], answer)
            if b" 400 " in answer.split(b"\r\n", 1)[0]:
                assert answer.endswith(b"\r\n\r\n400 Bad Request\n"), answer
    await serving.stopped()
    access = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
    assert any('"GET /download/<token>" 404' in line for line in access)
    assert any('"GET /<redacted>" 404' in line for line in access)
    # aiohttp logged each of these at ERROR with a traceback quoting the raw line.
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert_nothing_logged(caplog, secrets)


_JUNK: Final = st.one_of(
    st.binary(max_size=6),
    st.sampled_from(
        [
            *("😀".encode(), b"\xff", b"\x00", b"\x7f", b"\xc3(", b"\r\n", b"\n", b"\t"),
            *(b"%", b"/", b"//", b" ", b";", b"?", b"#", b"%0A", b"%2F"),
        ]
    ),
)
_SEGMENTS: Final = st.lists(
    st.one_of(st.sampled_from([b"download", b"status", b"admin", b"", b"..", b"%2F"]), _JUNK),
    max_size=4,
)
_METHODS: Final = st.one_of(st.sampled_from([b"GET", b"HEAD", b"POST", b"BREW"]), _JUNK)
_WHERE: Final = ("method", "path", "query", "version", "header name", "header value", "end")


@st.composite
def hostile_request(draw: st.DrawFn, token: str) -> bytes:
    """A request with ``token`` (as is, or percent-encoded) somewhere, junk around it, and
    maybe thousands of bytes more (past aiohttp's 8190-byte line limit)."""
    spelt = draw(st.sampled_from([token, "".join(f"%{ord(c):02X}" for c in token)])).encode()
    around = draw(_JUNK) + spelt + draw(_JUNK) + b"A" * draw(st.sampled_from([0, 0, 300, 9000]))
    where = draw(st.sampled_from(_WHERE))
    segments: list[bytes] = draw(_SEGMENTS)
    if where == "path":
        segments.insert(draw(st.integers(0, len(segments))), around)
    method = around if where == "method" else draw(_METHODS)
    query = b"?t=" + around if where == "query" else b""
    versions = st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2", b""])
    version = around if where == "version" else draw(versions)
    header = {
        "header name": b"X-" + around + b": 1",
        "header value": b"X-Token: " + around,
    }.get(where, b"X-Junk: " + draw(_JUNK))
    end = around if where == "end" else b""
    line = b" ".join([method, b"/" + b"/".join(segments) + query, version])
    return b"\r\n".join([line, b"Host: x", b"Connection: close", header, b"", end])


def hostile_requests(token: str, n: int) -> list[bytes]:
    """Examples from hypothesis, collected first (its runner is synchronous) and then sent
    over the test's event loop."""
    out: list[bytes] = []

    @hypothesis_settings(max_examples=n, database=None, phases=[Phase.generate])
    @given(hostile_request(token))
    def collect(request: bytes) -> None:
        out.append(request)

    collect()
    return out


async def test_hostile_requests_leak_no_token(
    serving: Serving, signer: tokens.Signer, caplog: pytest.LogCaptureFixture
) -> None:
    general, bound = signer.general(uuid.uuid4()), signer.bound(uuid.uuid4(), "alice")
    secrets = secrets_of(general, bound, quote(general, safe=""))
    answered = 0
    for token in (general, bound):
        for request in hostile_requests(token, 100):
            answer = await exchange(serving.port, request)
            answered += answer.startswith(b"HTTP/1.")
            assert all(secret not in answer for secret in secrets), (request, answer)
    assert answered > 100  # most of them got an answer: the property is not vacuous
    await serving.stopped()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert_nothing_logged(caplog, secrets)
