"""Callback URLs: where a webhook may be sent, as the contract states it.

One regular expression is the whole rule, written in the subset of regex that means the same
in ECMA 262 (the dialect of JSON Schema) and Python's ``re``, so the schema a producer
validates with and the check the worker runs cannot disagree. What a pattern cannot know
(which address a name resolves to) is checked when the webhook is sent
(``bgworker.effects.addresses``).
"""

from __future__ import annotations

import re
from typing import Annotated, Final

from pydantic import BeforeValidator, WithJsonSchema

from bgworker.contract import event_fields

# Long enough for any real endpoint with a query string; short enough for a header or a
# log line.
MAX_LENGTH: Final = 2000
_LABEL: Final = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
# 1-65535, no leading zeros.
_PORT: Final = (
    r"(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
)
# RFC 3986 pchar plus "/" and "?" (path and query), percent-encodings well formed.
_REST: Final = r"(?:[A-Za-z0-9._~!$&'()*+,;=:@/?-]|%[0-9A-Fa-f]{2})*"
# Absolute http(s), a host (a DNS name in ASCII: an internationalised one in its xn-- form,
# an IPv4 address, or a bracketed IPv6 address) and an optional port, then path and query.
# No user information (credentials would sit in every log and table that shows the URL),
# no fragment (never sent), no white space or control characters.
PATTERN: Final = (
    rf"^[Hh][Tt][Tt][Pp][Ss]?://(?:{_LABEL}(?:\.{_LABEL})*\.?|\[[0-9A-Fa-f:.]{{2,45}}\])"
    rf"(?::{_PORT})?(?:[/?]{_REST})?$"
)
_RE: Final = re.compile(PATTERN)
WHAT: Final = (
    "an absolute http:// or https:// URL with an ASCII host (xn-- form), no user "
    "information, no fragment, no spaces or control characters, at most "
    f"{MAX_LENGTH} characters"
)


def check(value: object) -> str:
    """The value when it is an acceptable callback URL, else a contract error."""
    if not isinstance(value, str):
        raise event_fields.error(f"must be a string, not {type(value).__name__}")
    if len(value) > MAX_LENGTH or not _RE.fullmatch(value):
        raise event_fields.error(f"must be {WHAT}")
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
