"""``callback_url`` at the contract: hostile strings are refused, the schema and the worker
agree on every string, and an accepted URL is one the sender can use safely."""

from __future__ import annotations

import json
import unicodedata
from typing import Any

import pytest
import yarl
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bgworker.contract import callback_urls, events
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
    """What the sender and every place that shows the URL rely on."""
    assert len(url) <= callback_urls.MAX_LENGTH
    assert not {unicodedata.category(c) for c in url} & {"Cc", "Cf", "Zs", "Zl", "Zp", "Cs"}
    assert url.isascii()
    parsed = yarl.URL(url, encoded=True)
    assert parsed.scheme in {"http", "https"}
    assert parsed.raw_host
    assert parsed.user is None and parsed.password is None
    assert parsed.fragment == ""
    assert "\\" not in url


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
     "é", "xn--", ".", "-", "80", "65535", "99999", "user:pw@", "example.com"]
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(
    st.lists(_pieces | st.text(max_size=6), min_size=1, max_size=8).map("".join)
    | st.text(max_size=40)
)
@example("https://example.com" + "/" * 1990)
@example("https://example.com" + "/" * 1981)
def test_any_string(url: str) -> None:
    _agree(url)
