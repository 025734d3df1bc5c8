"""What the download tests share: the file they serve, HTTP over a real socket, signing
in the past, and what every refusal looks like."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import aiohttp
from multidict import CIMultiDict

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.contract import events
from bgworker.links import tokens
from bgworker.web import headers as web_headers
from tests.helpers import insert_request

SIZE = 300_001
SEED = 5
FILENAME = "Résumé data;1.bin"
CONTENT_TYPE = "application/x-blob"
IDENTITY = "X-Auth-User"


def signer_in_the_past(config: settings_mod.TokenSettings, seconds: float) -> tokens.Signer:
    """A signer whose clock runs ``seconds`` behind: its tokens are that old (the clock is
    the signer's parameter, no global patched)."""
    return tokens.Signer(config, clock=lambda: time.time() - seconds)


def tamper(token: str) -> str:
    # A character in the middle of the signature: the last one only carries padding bits.
    i = len(token) - 10
    return token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1 :]


Headers = CIMultiDict[str]


async def fetch(method: str, url: str, **kwargs: Any) -> tuple[int, Headers, bytes]:
    async with aiohttp.ClientSession() as session:
        async with session.request(method, url, allow_redirects=False, **kwargs) as response:
            return response.status, CIMultiDict(response.headers), await response.read()


async def new_event(db: store.Store, requester_id: str | None = "alice") -> events.FileRequested:
    event = events.FileRequested(
        id=uuid.uuid4(),
        file_type="blob",
        filename="pending.bin",
        requester={"id": requester_id} if requester_id else None,
    )
    await insert_request(db, event, max_attempts=3)
    return event


def assert_refusal(status: int, hdrs: Headers, body: bytes, expected: int) -> dict[str, Any]:
    assert status == expected
    assert hdrs["Content-Type"].startswith("application/json")
    for name, value in web_headers.SECURITY_HEADERS.items():
        assert hdrs[name] == value
    assert "Content-Disposition" not in hdrs
    payload: dict[str, Any] = json.loads(body)
    assert payload["status"] == expected and payload["error"]
    return payload
