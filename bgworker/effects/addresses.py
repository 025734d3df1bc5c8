"""Which addresses a webhook may reach: only public ones, unless the deployment allows more.

A callback URL comes from a producer, so without this check it could make the worker POST to
its own metrics port, a database on the private network or a cloud metadata service (SSRF).
The host is resolved when the webhook is sent, every address it resolves to is checked, and
the connection goes to exactly those addresses (``webhooks`` pins them), so a name that
resolves to a public address for the check and a private one for the connection (DNS
rebinding) gets nowhere.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Final

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Checked in this order; the first that applies names the refusal.
_KINDS: Final = (
    ("unspecified", lambda a: a.is_unspecified),
    ("loopback", lambda a: a.is_loopback),
    ("link-local", lambda a: a.is_link_local),
    # fec0::/10, deprecated (RFC 3879) but still routed inside some networks; Python's
    # is_private does not list it.
    ("site-local", lambda a: isinstance(a, ipaddress.IPv6Address) and a.is_site_local),
    ("multicast", lambda a: a.is_multicast),
    ("reserved", lambda a: a.is_reserved),
    ("private", lambda a: a.is_private),
    # Anything else IANA does not list as globally reachable: shared address space
    # (100.64.0.0/10), documentation ranges, Teredo (2001::/32), ...
    ("not globally reachable", lambda a: not a.is_global),
)


class RefusedError(Exception):
    """The URL may not be called: permanent, never retried."""


def refusal(address: Address) -> str | None:
    """Why this address may not be called, or None for a public one."""
    # An IPv4-mapped IPv6 address (::ffff:127.0.0.1) reaches the IPv4 host it carries.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    # A 6to4 address (2002:V4ADDR::/48) is relayed to the IPv4 host it carries, so
    # 2002:7f00:1:: reaches 127.0.0.1 through a 6to4 relay; Python 3.11 calls 2002::/16
    # global, so the carried address is checked (Teredo, 2001::/32, is refused as private).
    if isinstance(address, ipaddress.IPv6Address) and address.sixtofour is not None:
        carried = refusal(address.sixtofour)
        if carried:
            return f"6to4 of a {carried}"
    for kind, applies in _KINDS:
        if applies(address):
            return kind
    return None


async def resolve(host: str, port: int, *, allow_private: bool) -> list[Address]:
    """Every address ``host`` resolves to, refused (RefusedError) if any of them is not public
    and ``allow_private`` is off. A name that does not resolve raises OSError (socket.gaierror):
    DNS trouble is retried, it may pass."""
    literal = host[1:-1] if host.startswith("[") else host
    infos = await asyncio.get_running_loop().getaddrinfo(
        literal, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    found: list[Address] = []
    for family, *_, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        # The scope id of a link-local IPv6 address ("fe80::1%eth0") is not part of it.
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    if not found:
        raise OSError(f"{host} resolves to no IPv4 or IPv6 address")
    if not allow_private:
        for address in found:
            why = refusal(address)
            if why:
                raise RefusedError(
                    f"{host} resolves to {address}, a {why} address "
                    "(BGWORKER_WEBHOOKS__ALLOW_PRIVATE allows it)"
                )
    return found
