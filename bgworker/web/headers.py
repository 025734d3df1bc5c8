"""Response headers: the security headers of every response, and Content-Disposition.

One definition each. ``SECURITY_HEADERS`` goes on every response the app writes itself
(downloads, status, refusals, health); the admin console sends ``CONSOLE_HEADERS``: the
same names, two values relaxed where the console's pages need less, plus what only an HTML
page needs (framing and script policy).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final
from urllib.parse import quote

# Characters never allowed in the quoted ASCII fallback (RFC 6266 section 4.3: quoted-string
# escaping is poorly supported, so drop rather than escape), as dj-bgfiles also did.
# "%" too: RFC 6266 appendix D, some clients decode "%2F" in the plain parameter as an
# escape, so "..%2Fetc" would become a path; the exact name travels in filename* anyway.
_FALLBACK_DROP: Final = frozenset('"\\/;%')

# Read-only: a shared constant that a handler could mutate would change every response.
SECURITY_HEADERS: Final[Mapping[str, str]] = MappingProxyType(
    {
        # The body is the requester's data: never stored by shared caches or browsers'
        # history. RFC 9111 section 5.2.2.5: no-store forbids every cache to keep it.
        "Cache-Control": "private, no-store",
        # The URL carries the token: never send it on to a site the page or file links to.
        "Referrer-Policy": "no-referrer",
        # Browsers must not guess an HTML type from a file's bytes (MIME sniffing).
        "X-Content-Type-Options": "nosniff",
    }
)

CONSOLE_HEADERS: Final[Mapping[str, str]] = MappingProxyType(
    {
        **SECURITY_HEADERS,
        # The console's pages hold no requester data a browser might keep, only operator
        # views that must not be cached either: no-store alone says so.
        "Cache-Control": "no-store",
        # Console URLs carry no token (the session is a cookie), so the console's own pages
        # may see where a click came from; other sites may not.
        "Referrer-Policy": "same-origin",
        # No other site may frame the console (clickjacking); CSP frame-ancestors says the
        # same to browsers that read it, X-Frame-Options to older ones.
        "X-Frame-Options": "DENY",
        # The pages are server-rendered with inline styles and no scripts at all.
        "Content-Security-Policy": (
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
            "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        ),
    }
)


def content_disposition(filename: str, disposition: str = "attachment") -> str:
    """RFC 6266 value: an ASCII ``filename`` fallback plus RFC 8187 ``filename*`` in UTF-8
    when the name is not plain ASCII."""
    ascii_name = unicodedata.normalize("NFKD", filename).encode("ascii", "ignore").decode("ascii")
    ascii_name = "".join(c for c in ascii_name if c not in _FALLBACK_DROP and 0x20 <= ord(c) < 0x7F)
    # NFKD turns "‥" (U+2025) and fullwidth dots into "..": a name that is only dots (or
    # starts with them) is a path step or a hidden file to the client saving it, and curl
    # -OJ cannot write ".." at all. Dots and spaces go from the end; a name left starting
    # with a dot gets the default name in front ("東京.csv" -> "download.csv"), and a name
    # left empty is the default name.
    ascii_name = ascii_name.strip().rstrip(" .")
    if ascii_name.startswith(".") or not ascii_name:
        ascii_name = "download" + "." * bool(ascii_name.strip(".")) + ascii_name.strip(". ")
    value = f'{disposition}; filename="{ascii_name}"'
    if ascii_name != filename:
        value += f"; filename*=UTF-8''{quote(filename, safe='')}"
    return value
