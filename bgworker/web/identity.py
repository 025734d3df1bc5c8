"""Who is calling, for requester-bound links (tokens.Signer.bound).

bgworker has no users of its own: the caller's id comes from a header that a trusted
authenticating proxy sets (``BGWORKER_WEB__IDENTITY_HEADER``), or from a callable an
embedding application passes to ``create_app``. Without either, nobody matches a bound link.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

from aiohttp import web

Identity = Callable[[web.Request], Awaitable[str | None] | str | None]


def header_identity(name: str | None) -> Identity:
    """The value of header ``name`` (never trust it unless a proxy sets and strips it)."""

    def identify(request: web.Request) -> str | None:
        return request.headers.get(name) if name else None

    return identify


async def caller(identify: Identity, request: web.Request) -> str | None:
    """Run ``identify``, awaiting it when the application gave a coroutine function."""
    who = identify(request)
    if inspect.isawaitable(who):
        who = await who
    return who
