"""Who is calling, for requester-bound links (tokens.Signer.bound), and from which address
(``client_address``, behind trusted reverse proxies).

bgworker has no users of its own: the caller's id comes from a header that a trusted
authenticating proxy sets (``BGWORKER_WEB__IDENTITY_HEADER``), or from a callable an
embedding application passes to ``create_app``. Without either, nobody matches a bound link.
"""

from __future__ import annotations

import inspect
import ipaddress
from collections.abc import Awaitable, Callable, Sequence

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


Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def client_address(request: web.BaseRequest, trusted: Sequence[Network]) -> str:
    """The address a request came from, for counting per client (the console's login
    throttle). ``X-Forwarded-For`` is believed only when the connection comes from a
    ``trusted`` proxy, and only so far: each proxy appends the address it saw, so walking
    from the right the first address that is not a trusted proxy is the client (anything
    left of it, the client may have written). Without trusted proxies, or from any other
    peer, the peer's address: a forged header changes nothing."""
    peer = _address(request.remote or "") or request.remote or "unknown"
    if not _within(peer, trusted):
        return peer
    hops = [
        hop.strip()
        for value in request.headers.getall("X-Forwarded-For", ())
        for hop in value.split(",")
    ]
    client = peer  # no header: the proxy itself called
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:
            # Not an address: no proxy we trust writes that, so it is text the client wrote,
            # and the hop right of it (already in ``client``) is the last one we can name.
            return client
        client = address
        if not _within(address, trusted):
            return client
    return client  # every hop a trusted proxy: the farthest one


def _address(text: str) -> str | None:
    """``text`` as one canonical IP address (a port some proxies add dropped), or None."""
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":")[0]
    try:
        return str(_unmapped(ipaddress.ip_address(text)))
    except ValueError:
        return None


def _within(address: str, networks: Sequence[Network]) -> bool:
    try:
        ip = _unmapped(ipaddress.ip_address(address))
    except ValueError:
        return False
    return any(ip in network for network in networks)


def _unmapped(ip: Address) -> Address:
    """An IPv4 peer of a dual-stack socket arrives as ``::ffff:a.b.c.d``: as a.b.c.d."""
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return mapped or ip
