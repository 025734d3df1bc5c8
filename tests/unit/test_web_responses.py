"""The web app's shared pieces without a server: the JSON helper, the header sets, the caller."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from hypothesis import given
from hypothesis import strategies as st

from bgworker.web import headers, identity, responses

# JSON values as a producer or a row could hold them (finite numbers only: see below).
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


def _body(response: web.Response) -> Any:
    assert response.text is not None
    return json.loads(response.text)


@given(json_values)
def test_json_response_round_trips_any_json_value(value: Any) -> None:
    response = responses.json_response(value)
    assert response.content_type == "application/json"
    assert response.charset == "utf-8"
    assert _body(response) == value


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_json_response_refuses_what_json_cannot_say(number: float) -> None:
    # json.dumps would write NaN/Infinity, which no strict JSON parser accepts (RFC 8259).
    with pytest.raises(ValueError, match="JSON compliant"):
        responses.json_response({"progress": number})


def test_json_response_carries_the_security_headers_and_the_callers() -> None:
    response = responses.json_response(
        {"error": "x"}, status=401, headers={"WWW-Authenticate": "Basic", "Cache-Control": "x"}
    )
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == "Basic"
    assert response.headers["Cache-Control"] == "x"  # the caller's value wins on a clash
    for name in ("Referrer-Policy", "X-Content-Type-Options"):
        assert response.headers[name] == headers.SECURITY_HEADERS[name]


def test_json_response_with_its_own_encoder() -> None:
    response = responses.json_response({"a": 1}, encode=lambda value: '{"encoded": true}')
    assert _body(response) == {"encoded": True}


def test_header_sets_are_read_only_and_the_console_set_names_the_common_ones() -> None:
    with pytest.raises(TypeError):
        headers.SECURITY_HEADERS["Cache-Control"] = "public"  # type: ignore[index]
    with pytest.raises(TypeError):
        headers.CONSOLE_HEADERS["X-Frame-Options"] = "SAMEORIGIN"  # type: ignore[index]
    # Every common header is on console pages too (with the console's own value).
    assert set(headers.SECURITY_HEADERS) < set(headers.CONSOLE_HEADERS)
    assert "no-store" in headers.CONSOLE_HEADERS["Cache-Control"]
    assert "frame-ancestors 'none'" in headers.CONSOLE_HEADERS["Content-Security-Policy"]


async def test_caller_from_a_header_a_function_or_a_coroutine() -> None:
    request = make_mocked_request("GET", "/", headers={"X-User": "alice"})
    assert await identity.caller(identity.header_identity("X-User"), request) == "alice"
    assert await identity.caller(identity.header_identity("X-Other"), request) is None
    assert await identity.caller(identity.header_identity(None), request) is None

    async def from_cookie(req: web.Request) -> str | None:
        return "bob"

    assert await identity.caller(from_cookie, request) == "bob"
    assert await identity.caller(lambda req: None, request) is None
