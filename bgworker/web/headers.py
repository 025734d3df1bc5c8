"""Response headers for downloads."""

from __future__ import annotations

import unicodedata
from typing import Final
from urllib.parse import quote

# Characters never allowed in the quoted ASCII fallback (RFC 6266 section 4.3: quoted-string
# escaping is poorly supported, so drop rather than escape), as dj-bgfiles also did.
_FALLBACK_DROP: Final = frozenset('"\\/;')

SECURITY_HEADERS: Final = {
    # The body is the requester's data: never stored by shared caches or browsers' history.
    "Cache-Control": "private, no-store",
    # The link carries the token: do not leak it to sites the file links to.
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


def content_disposition(filename: str, disposition: str = "attachment") -> str:
    """RFC 6266 value: an ASCII ``filename`` fallback plus RFC 8187 ``filename*`` in UTF-8
    when the name is not plain ASCII."""
    ascii_name = unicodedata.normalize("NFKD", filename).encode("ascii", "ignore").decode("ascii")
    ascii_name = (
        "".join(c for c in ascii_name if c not in _FALLBACK_DROP and 0x20 <= ord(c) < 0x7F).strip()
        or "download"
    )
    value = f'{disposition}; filename="{ascii_name}"'
    if ascii_name != filename:
        value += f"; filename*=UTF-8''{quote(filename, safe='')}"
    return value
