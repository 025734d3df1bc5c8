"""Offloaded downloads: the server checks the link, nginx sends the bytes.

With ``BGWORKER_WEB__DOWNLOAD_MODE=accel`` a granted download is answered with an empty
response carrying ``X-Accel-Redirect: <accel_prefix><storage key>``; nginx in front
(``deploy/nginx/bgworker.conf``) serves that path from an ``internal`` location mapped to
``BGWORKER_STORAGE_DIR``, with sendfile, Range (206/416, multi-range), its own strong ETag,
If-None-Match and If-Range. Refusals never get here: ``downloads.link_state`` decides them
exactly as in the streamed mode, so a bad, expired or revoked link never names a path.

What nginx keeps of this answer (ngx_http_upstream.c, headers marked ``redirect``):
Content-Type, Content-Disposition, Cache-Control, Expires, Set-Cookie, Accept-Ranges and
X-Accel-Limit-Rate. Everything else, ETag and our other security headers included, is
dropped, so the shipped config adds ``Referrer-Policy`` and ``X-Content-Type-Options``
itself in the internal location.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import quote

from aiohttp import web

from bgworker import store
from bgworker.web import headers, keys

ACCEL_REDIRECT: Final = "X-Accel-Redirect"


def accel_path(prefix: str, storage_key: str) -> str:
    """The internal URI nginx serves. Keys are ``storage.key_for`` output (hex, ``-``,
    ``.``, one ``/``), so quoting changes nothing today; it keeps a future key from being
    read by nginx as a query string (``?``) or a fragment."""
    return prefix + quote(storage_key, safe="/")


def response(request: web.Request, row: store.RequestRow) -> web.Response | None:
    """The offloaded answer for a granted download, or None when the server streams the
    bytes itself (any mode but ``accel``)."""
    prefix = request.app[keys.ACCEL_PREFIX]
    if prefix is None or row.storage_key is None:
        return None
    return web.Response(
        status=200,
        headers={
            ACCEL_REDIRECT: accel_path(prefix, row.storage_key),
            "Content-Type": row.content_type,
            "Content-Disposition": headers.content_disposition(row.filename),
            # Cache-Control survives the redirect in nginx; the other two are added by the
            # internal location (they would be dropped) and are here for a direct caller.
            **headers.SECURITY_HEADERS,
        },
    )
