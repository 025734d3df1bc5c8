"""JSON responses: the one way the web app turns a value into a JSON body.

Every JSON response carries ``headers.SECURITY_HEADERS`` (a refusal or a status page says
whether a request exists and how far it got: no cache may keep it either).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from typing import Any, Final

from aiohttp import web

from bgworker.web import headers as headers_mod

# RFC 8259 section 6: NaN and the infinities are not JSON, yet json.dumps writes them by
# default; allow_nan=False raises instead, so a bug is an error here and not a body that
# strict clients (JSON.parse, jq) refuse.
dumps: Final[Callable[[Any], str]] = functools.partial(json.dumps, allow_nan=False)


def json_response(
    data: Any,
    *,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
    encode: Callable[[Any], str] = dumps,
) -> web.Response:
    """``data`` as ``application/json; charset=utf-8``; ``headers`` are added to the security
    headers (and win on a clash); ``encode`` replaces ``dumps`` for values that need their
    own conversion (the admin console's letters: ``dlq_letter.dumps``)."""
    return web.json_response(
        data,
        status=status,
        headers={**headers_mod.SECURITY_HEADERS, **(headers or {})},
        dumps=encode,
    )
