"""Callback URLs: the JSON Schema, the contract and the webhook sender decide alike.

``callback_urls.parse`` is the one parser: the contract validates with it, the sender posts
to what it returns, and the schema states its pattern. The properties: the schema and the
worker agree on every string; every URL they accept is one the sender calls, delivered to a
real receiver with the path and query as written; every URL they refuse, the sender refuses
without a connection (never a webhook retried in vain).
"""

from __future__ import annotations

import asyncio
import http.server
import ipaddress
import json
import socket
import threading
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import yarl
from aiohttp import helpers as aiohttp_helpers
from hypothesis import event as hypothesis_event
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bgworker.contract import callback_urls, events
from bgworker.effects import addresses, webhooks
from tests import helpers
from tests.unit.test_contract import FULL, PLAIN, VALID, schema_accepts


def _body(url: Any) -> bytes:
    return json.dumps({**VALID, "callback_url": url}).encode()


def _worker_accepts(url: Any) -> bool:
    try:
        event = events.parse_file_requested(_body(url))
    except events.InvalidEventError as exc:
        assert str(exc).startswith("callback_url: "), exc
        return False
    assert event.callback_url == url
    return True


def _usable(url: str) -> None:
    """What the sender and every place that shows the URL rely on: yarl reads it as written,
    and the host is a literal aiohttp connects to or a name it asks the resolver about."""
    assert len(url) <= callback_urls.MAX_LENGTH
    assert not {unicodedata.category(c) for c in url} & {"Cc", "Cf", "Zs", "Zl", "Zp", "Cs"}
    assert url.isascii()
    assert "\\" not in url
    parsed = callback_urls.parse(url)
    assert parsed == yarl.URL(url, encoded=True)
    assert parsed.scheme in {"http", "https"}
    assert parsed.user is None and parsed.password is None
    assert parsed.fragment == ""
    host = parsed.raw_host
    assert host
    if aiohttp_helpers.is_ip_address(host):
        # aiohttp connects to a literal without asking the resolver; one it will not call
        # (a legacy IPv4 form) or getaddrinfo cannot read would fail every attempt.
        address = ipaddress.ip_address(host)
        assert ":" in host or aiohttp_helpers.is_canonical_ipv4_address(host)
        socket.getaddrinfo(host, 80, flags=socket.AI_NUMERICHOST)
        assert address.version == (6 if ":" in host else 4)
    else:
        # A name: resolvable in form (getaddrinfo encodes it with the idna codec).
        assert len(host.removesuffix(".")) <= callback_urls.MAX_NAME_LENGTH
        host.encode("idna")


def _agree(url: Any) -> bool:
    accepted = _worker_accepts(url)
    assert schema_accepts(FULL, _body(url)) is accepted, url
    assert schema_accepts(PLAIN, _body(url)) is accepted, url
    if accepted and url is not None:
        _usable(url)
    return accepted


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/bgworker",
        "http://127.0.0.1:8080/hook?token=a%20b&x=1",
        "https://[2001:db8::1]:8443/",
        "HTTPS://xn--exmple-cua.org./a/b;c=d",
        "http://localhost",
        "http://[::ffff:127.0.0.1]:8080/",
        "http://[1:2:3:4:5:6:7::]/",
        "http://[0000:0000:0000:0000:0000:0000:0000:0001]/",
        "http://[FE80::1]/",
        "http://1.2.3.4a/",
        "http://123.example/",
        "http://0x1g.example/",
        "http://" + "a." * 126 + "a./",
    ],
)
def test_plain_urls_are_accepted(url: str) -> None:
    assert _agree(url)


@pytest.mark.parametrize(
    "url",
    [
        "",
        "example.com/hook",
        "//example.com/hook",
        "ftp://example.com/",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "gopher://127.0.0.1:6379/_FLUSHALL",
        "https://user:secret@example.com/",
        "https://user@example.com/",
        "https://example.com@127.0.0.1/",
        "https://example.com/#frag",
        "https://example.com/ a",
        "https://example.com/\r\nX-Injected: 1",
        "https://example.com/\x00",
        "https://exa mple.com/",
        "https://exämple.com/",
        "https://example.com/\u202e",
        "https://example.com\\@127.0.0.1/",
        "https://example.com:0/",
        "https://example.com:65536/",
        "https://example.com:80:80/",
        "https://-bad.example.com/",
        "https:///path",
        "https://example.com/%zz",
        "https://" + "a" * 64 + ".com/",
        "https://example.com/" + "a" * 2000,
        # Brackets hold an IPv6 address and nothing else: yarl refuses the first, getaddrinfo
        # reads the others as names that never resolve. Each was retried as a webhook.
        "http://[127.0.0.1]",
        "http://[1:2]/",
        "http://[00000::1]/",
        "http://[1::2::3]/",
        "http://[::1%25lo]/",
        "http://[v1.x]/",
        # A host ending in a number is an IPv4 address (WHATWG, getaddrinfo); aiohttp calls
        # only a dotted quad, and these resolve nowhere or somewhere else than they say.
        "http://134744072/",
        "http://127.1/",
        "http://0x7f.1/",
        "http://010.010.010.010/",
        "http://127.0.0.1./",
        "http://1.2.3.4.5/",
        "http://999.1.1.1/",
        "http://example.123/",
        "http://example.0x/",
        # Longer than a DNS name can be.
        "http://" + "a." * 127 + "a/",
        42,
        ["https://example.com/"],
        {"url": "https://example.com/"},
        True,
    ],
)
def test_hostile_urls_are_refused_by_schema_and_worker(url: Any) -> None:
    assert not _agree(url)


def test_null_means_no_callback() -> None:
    assert _agree(None)


_pieces = st.sampled_from(
    ["http://", "https://", "HTTP://", "http:/", "//", "javascript:", "a", "@", ":", "[", "]",
     "::1", "127.0.0.1", "%", "%2f", "#", "?", "/", "\\", " ", "\r\n", "\x00", "\u2028",
     "é", "xn--", ".", "-", "80", "65535", "99999", "user:pw@", "example.com", "0x", "1."]
)  # fmt: skip


@settings(max_examples=helpers.examples(400))
@given(
    st.lists(_pieces | st.text(max_size=6), min_size=1, max_size=8).map("".join)
    | st.text(max_size=40)
)
@example("https://example.com" + "/" * 1990)
@example("https://example.com" + "/" * 1981)
# Found by this test at random (issue 18): the pattern took it, yarl refuses it.
@example("http://[127.0.0.1]")
@example("http://[1:2]")
@example("http://8.8.2056")
def test_any_string(url: str) -> None:
    _agree(url)


# -- IP literals: the pattern spells out what Python's ipaddress reads ---------------------


_ANY_IPV6 = st.ip_addresses(v=6)


@st.composite
def ipv6_spellings(draw: st.DrawFn, address: st.SearchStrategy[Any] = _ANY_IPV6) -> str:
    """Any way RFC 4291 lets one write ``address``: zero-padded or not, either case, an
    IPv4 tail, "::" over any run of zero groups."""
    packed = draw(address).packed
    groups = [int.from_bytes(packed[i : i + 2], "big") for i in range(0, 16, 2)]
    texts = [f"{g:0{draw(st.integers(1, 4))}x}" for g in groups]
    if draw(st.booleans()):
        texts = [t.upper() for t in texts]
    tail = ".".join(str(b) for b in packed[12:]) if draw(st.booleans()) else None
    width = 6 if tail else 8
    zero_runs = [
        (i, j) for i in range(width) for j in range(i + 1, width + 1) if not any(groups[i:j])
    ]
    if tail and not any(groups[6:]):
        zero_runs += [(i, 8) for i in range(6) if not any(groups[i:6])]
    head = texts[:width]
    compress = draw(st.booleans())
    if zero_runs and compress:
        i, j = draw(st.sampled_from(zero_runs))
        if j == 8:  # the run takes in the IPv4 tail's zeros too
            return ":".join(head[:i]) + "::"
        text = ":".join(head[:i]) + "::" + ":".join(head[j:])
        return text + (("" if j == width else ":") + tail if tail else "")
    return ":".join(head) + (":" + tail if tail else "")


def _python_reads(text: str, version: int) -> bool:
    try:
        ipaddress.IPv6Address(text) if version == 6 else ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


@settings(max_examples=helpers.examples(400))
@given(
    ipv6_spellings()
    | ipv6_spellings(st.sampled_from([ipaddress.ip_address(a) for a in ("::", "::1", "1::")]))
    | st.text(alphabet="0123456789abcdefABCDEF:.%", max_size=45)
)
@example("127.0.0.1")
@example("::ffff:127.0.0.01")
@example("1:2:3:4:5:6:7:8:9")
def test_a_bracketed_host_is_exactly_an_ipv6_address(text: str) -> None:
    assert _agree(f"http://[{text}]:8080/") is _python_reads(text, 6), text


@settings(max_examples=helpers.examples(300))
@given(
    st.ip_addresses(v=4).map(str)
    | st.lists(st.integers(0, 300).map(str) | st.sampled_from(["0x7f", "00", "0x"]), max_size=6)
    .map(".".join)
    .flatmap(lambda t: st.sampled_from([t, t + ".", "a." + t, t + "a"]))
)
def test_a_host_ending_in_a_number_is_exactly_a_dotted_quad(host: str) -> None:
    accepted = _agree(f"http://{host}/")
    if callback_urls._ENDS_IN_NUMBER.search(host):
        assert accepted is _python_reads(host, 4), host


# -- The sender calls every URL the contract accepts, and nothing else ----------------------


@dataclass
class _Receiver:
    """Loopback HTTP on one port over IPv4 and IPv6 (a thread each), recording each request
    line and Host header as the bytes arrived: no web framework tidies them up first."""

    port: int = 0
    seen: list[tuple[str, str]] = field(default_factory=list)


def _handler(receiver: _Receiver) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            receiver.seen.append((self.requestline, self.headers.get("Host", "")))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return None

    return Handler


class _V6Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6


@pytest.fixture(scope="module")
def receiver() -> Iterator[_Receiver]:
    found = _Receiver()
    v4 = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(found))
    found.port = v4.server_address[1]
    # The same port on ::1 (free there unless another process took it in between).
    v6 = _V6Server(("::1", found.port), _handler(found))
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (v4, v6)]
    for thread in threads:
        thread.start()
    yield found
    for server in (v4, v6):
        server.shutdown()
        server.server_close()
    for thread in threads:
        thread.join()


_LOOPBACK_V6 = st.sampled_from([ipaddress.ip_address(a) for a in ("::1", "::ffff:127.0.0.1")])
_loopback_hosts = (
    # Not "localhost.": this machine's resolver does not know the root-qualified name.
    st.sampled_from(["127.0.0.1", "localhost", "LOCALHOST", "LocalHost"])
    | ipv6_spellings(_LOOPBACK_V6).map(lambda t: f"[{t}]")
    | st.sampled_from(["[127.0.0.1]", "[::1%25lo]", "127.1", "127.0.0.1.", "[::1]x", "[0::0::1]"])
)
_rest = st.lists(
    st.sampled_from(
        [*"abcAZ09._~!$&'()*+,;=:@/?-", "%20", "%2F", "%2f", "%00", "%", "#", " ", "[", "\\"]
    ),
    max_size=30,
).map("".join)
_SENDER = webhooks.Sender(keys=(b"k" * 32,), timeout_seconds=10, allow_private=True)


def _as_sent(rest: str) -> str:
    """The request target a URL's path and query make: the path as written ("/" if none),
    then "?" and the query unless it is empty."""
    path, mark, query = rest.partition("?")
    return (path or "/") + (mark + query if query else "")


@settings(max_examples=helpers.examples(150))
@given(
    scheme=st.sampled_from(["http", "HTTP", "Http"]),
    host=_loopback_hosts,
    rest=_rest.map(lambda r: r if r[:1] in ("", "/", "?") else "/" + r),
)
@example(scheme="http", host="[127.0.0.1]", rest="/")
@example(scheme="http", host="[::ffff:127.0.0.1]", rest="/a/../b?x=/../")
def test_the_sender_calls_every_url_the_contract_accepts(
    receiver: _Receiver, scheme: str, host: str, rest: str
) -> None:
    url = f"{scheme}://{host}:{receiver.port}{rest}"
    accepted = _agree(url)
    hypothesis_event("accepted" if accepted else "refused")
    receiver.seen.clear()
    if not accepted:
        # Refused at once by the same parser: no connection, nothing to retry.
        with pytest.raises(addresses.RefusedError, match="is not a callback URL"):
            asyncio.run(_SENDER.send(url, "an-id", b"{}"))
        assert receiver.seen == []
        return
    asyncio.run(_SENDER.send(url, "an-id", b"{}"))
    [(request_line, host_header)] = receiver.seen
    assert request_line == f"POST {_as_sent(rest)} HTTP/1.1", url
    sent_host = host_header.rpartition(":")[0].strip("[]").removesuffix(".").lower()
    written = host.strip("[]").removesuffix(".").lower()
    if ":" in written:  # an IPv6 literal: any spelling of the same address
        assert ipaddress.ip_address(sent_host) == ipaddress.ip_address(written)
    else:
        assert sent_host == written
