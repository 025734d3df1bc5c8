"""Callback URLs: where a webhook may be sent, as the contract states it.

One function, ``parse``, decides: the contract (a request's ``callback_url``), the
deployment's ``webhooks.url`` and the webhook sender all call it, and the sender posts to
the ``yarl.URL`` it returns, so no URL passes validation that the sender then cannot call
(``http://[127.0.0.1]`` once did: the pattern took it, yarl refused it at every retry).

``parse`` is a regular expression, then yarl (the sender's URL parser), then ``ipaddress``
on an IP literal host. The expression is written in the subset of regex that means the same
in ECMA 262 (the dialect of JSON Schema) and Python's ``re``, and it is what the JSON Schema
states; it spells out the IP literal grammar (RFC 3986 section 3.2.2) and the host rules, so
the two later steps refuse nothing it accepts (tests/unit/test_callback_urls.py proves it
on generated strings) and the schema a producer validates with agrees with the worker on
every string. What no schema can know, which addresses a name resolves to and whether they
are public, is checked when the webhook is sent (``bgworker.effects.addresses``).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Final

import yarl
from pydantic import BeforeValidator, WithJsonSchema

from bgworker.contract import event_fields

# Long enough for any real endpoint with a query string; short enough for a header or a
# log line.
MAX_LENGTH: Final = 2000
# RFC 1035: a name is at most 255 octets on the wire, 253 characters written (254 with
# the root's dot); a longer one resolves nowhere, so it would only be retried.
MAX_NAME_LENGTH: Final = 253
_LABEL: Final = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
# What ends a host in the URL: the port, the path, the query or the end.
_HOST_END: Final = r"(?:[:/?]|$)"
# A last label that is a number makes the host an IPv4 address in the WHATWG URL standard
# (browsers, curl's parser) and in getaddrinfo, and aiohttp refuses every such host but a
# dotted quad ("127.1", "2130706433", "0x7f.1"): so such a host must be a dotted quad.
_NUMBER: Final = r"(?:[0-9]+|0[xX][0-9A-Fa-f]*)"
_NAME: Final = (
    rf"(?=[A-Za-z0-9.-]{{1,{MAX_NAME_LENGTH}}}\.?{_HOST_END})"
    rf"(?:{_LABEL}\.)*(?!{_NUMBER}\.?{_HOST_END}){_LABEL}\.?"
)
# Decimal 0-255 without leading zeros (Python's ipaddress refuses them too).
_OCTET: Final = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
IPV4: Final = rf"{_OCTET}(?:\.{_OCTET}){{3}}"
_H16: Final = r"[0-9A-Fa-f]{1,4}"
_LS32: Final = rf"(?:{_H16}:{_H16}|{IPV4})"
# RFC 3986 IPv6address: eight groups, or fewer around one "::", the last two may be an
# IPv4 address.
IPV6: Final = (
    "(?:"
    + "|".join(
        [
            rf"(?:{_H16}:){{6}}{_LS32}",
            rf"::(?:{_H16}:){{5}}{_LS32}",
            *(rf"(?:(?:{_H16}:){{0,{k}}}{_H16})?::(?:{_H16}:){{{4 - k}}}{_LS32}" for k in range(5)),
            rf"(?:(?:{_H16}:){{0,5}}{_H16})?::{_H16}",
            rf"(?:(?:{_H16}:){{0,6}}{_H16})?::",
        ]
    )
    + ")"
)
# 1-65535, no leading zeros.
_PORT: Final = (
    r"(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
)
# RFC 3986 pchar plus "/" and "?" (path and query), percent-encodings well formed.
_REST: Final = r"(?:[A-Za-z0-9._~!$&'()*+,;=:@/?-]|%[0-9A-Fa-f]{2})*"
# Absolute http(s), a host (an IPv4 address as a dotted quad, a DNS name in ASCII whose last
# label is not a number: an internationalised one in its xn-- form, or a bracketed IPv6
# address) and an optional port, then path and query. No user information (credentials
# would sit in every log and table that shows the URL), no fragment (never sent), no white
# space or control characters.
PATTERN: Final = (
    rf"^[Hh][Tt][Tt][Pp][Ss]?://(?:{IPV4}|{_NAME}|\[{IPV6}\])"
    rf"(?::{_PORT})?(?:[/?]{_REST})?$"
)
_RE: Final = re.compile(PATTERN)
_ENDS_IN_NUMBER: Final = re.compile(rf"(?:^|\.){_NUMBER}\.?$")
WHAT: Final = (
    "an absolute http:// or https:// URL whose host is a DNS name in ASCII (xn-- form) "
    "not ending in a number, a dotted-quad IPv4 address or a bracketed IPv6 address; no "
    f"user information, no fragment, no spaces or control characters, at most {MAX_LENGTH} "
    "characters"
)
SCHEMES: Final = frozenset({"http", "https"})


class InvalidUrlError(ValueError):
    """Not a callback URL: the contract refuses it, the sender never calls it."""


def parse(value: str) -> yarl.URL:
    """The URL a webhook to ``value`` is sent to, or InvalidUrlError saying why there is
    none. The sender posts to exactly this object (nothing parses the string again)."""
    if len(value) > MAX_LENGTH or not _RE.fullmatch(value):
        raise InvalidUrlError(f"must be {WHAT}")
    # From here on the pattern has spoken; these steps are the sender's own parsers, kept so
    # that a gap in the pattern shows as a refusal here, never as a webhook retried in vain.
    try:
        url = yarl.URL(value, encoded=True)
        host = url.raw_host or ""
        if ":" in host:
            ipaddress.IPv6Address(host)
        elif _ENDS_IN_NUMBER.search(host):
            ipaddress.IPv4Address(host)
    except ValueError as exc:
        raise InvalidUrlError(f"must be {WHAT} ({exc})") from None
    if url.scheme not in SCHEMES or not host or url.raw_user is not None or url.raw_fragment:
        raise InvalidUrlError(f"must be {WHAT}")
    return url


def check(value: object) -> str:
    """The value when it is an acceptable callback URL, else a contract error."""
    if not isinstance(value, str):
        raise event_fields.error(f"must be a string, not {type(value).__name__}")
    try:
        parse(value)
    except InvalidUrlError as exc:
        raise event_fields.error(str(exc)) from None
    return value


CallbackUrl = Annotated[
    str,
    BeforeValidator(check),
    WithJsonSchema(
        {
            "type": "string",
            "maxLength": MAX_LENGTH,
            "pattern": PATTERN,
            **event_fields.NO_LINE_BREAKS,
        }
    ),
]
"""``callback_url`` at the contract: hostile strings are refused, the schema and the worker
agree on every string, and an accepted URL is one the sender can call (``parse``)."""
