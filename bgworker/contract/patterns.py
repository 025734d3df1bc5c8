"""The contract's limits and text patterns, each written once: the field types
(``event_fields``) validate with the compiled forms and state the pattern strings in the JSON
Schema, so the check the worker runs and the schema a producer reads cannot drift.

Patterns are written in the subset of regex that means the same in ECMA 262 (the dialect of
JSON Schema) and Python's ``re``.
"""

from __future__ import annotations

import importlib.resources
import re
from typing import Final

# Handler input, measured as the UTF-8 bytes of its compact JSON (strict_json.json_size).
MAX_CRITERIA_BYTES: Final = 64 * 1024
# Levels of nesting in criteria; the criteria object itself is level 1.
MAX_CRITERIA_DEPTH: Final = 32
MAX_LIFETIME_SECONDS: Final = 366 * 24 * 3600

FILE_TYPE_PATTERN: Final = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
# RFC 9110 section 8.3.1: media-type = type "/" subtype parameters, parameters =
# *( OWS ";" OWS [ parameter ] ), parameter-value = token / quoted-string (5.6.2, 5.6.4).
# Narrowed to visible ASCII and SP: no HTAB or obs-text, so the value is safe in any header.
_TOKEN: Final = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED: Final = r'"(?:[ !#-\[\]-~]|\\[ -~])*"'
CONTENT_TYPE_PATTERN: Final = rf"^{_TOKEN}/{_TOKEN}(?: *;(?: *{_TOKEN}=(?:{_TOKEN}|{_QUOTED}))?)*$"
# Canonical 8-4-4-4-12 hex form (RFC 9562 section 4); hex is case-insensitive on input.
UUID_PATTERN: Final = (
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)
LANGUAGE_PATTERN: Final = r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$"
# RFC 3339 date-time, with the year as written in 1970..9998, 1 to 6 fractional digits and an
# offset within +-23:59. Converted to UTC it stays within Python's datetime (years 1..9999)
# and PostgreSQL's timestamptz: years 1 or 9999 with an extreme offset overflow when asyncpg
# converts them, which is why the range is part of the contract.
REQUESTED_AT_PATTERN: Final = (
    r"^(?:19[7-9][0-9]|[2-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])"
    r"-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
    r"[Tt](?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,6})?"
    r"(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])$"
)
MIN_REQUESTED_YEAR: Final = 1970
MAX_REQUESTED_YEAR: Final = 9998
# Addresses are ASCII (RFC 5321 without the SMTPUTF8 extension of RFC 6531, which relays
# need not support: an address they refuse would be retried by the outbox forever). An
# internationalised domain is accepted in its A-label form (xn--...). The local part is a
# dot-atom (RFC 5322 section 3.2.3; no quoted strings) of at most 64 octets, the domain has
# at least two labels, and the whole address fits the 254 octets of a forward path.
EMAIL_PATTERN: Final = (
    r"^(?=[^@]{1,64}@)[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
    r"[A-Za-z](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$"
)
MAX_EMAIL_LENGTH: Final = 254
# Special-use domains that never receive mail (RFC 6761 test/invalid/localhost, RFC 6762
# local, RFC 7686 onion, and arpa): the same list email-validator refuses by default.
SPECIAL_USE_DOMAINS: Final = ("arpa", "invalid", "local", "localhost", "onion", "test")
SPECIAL_USE_PATTERN: Final = (
    r"\.(?:"
    + "|".join("".join(f"[{c.upper()}{c}]" for c in name) for name in SPECIAL_USE_DOMAINS)
    + r")$"
)
# Characters no field outside criteria may hold, because those fields reach HTTP or email
# headers or a one-line rendering: Unicode category Cc (U+0000-001F, U+007F-009F), Zl
# (U+2028) and Zp (U+2029). Written as regex escapes that mean the same in ECMA 262 (the
# dialect of JSON Schema patterns) and Python's re.
LINE_BREAKING: Final = r"[\x00-\x1f\x7f-\x9f\u2028\u2029]"
# Bidirectional controls (Unicode UAX #9): in a filename they make `invoice<U+202E>fdp.exe`
# display as `invoiceexe.pdf`.
BIDI: Final = r"[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]"
# Python's str.isspace() set, spelled out so the schema does not depend on the interpreter.
SPACE: Final = r"[\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
FILENAME_SEPARATORS: Final = r'[/\\"]'

LINE_BREAKING_RE: Final = re.compile(LINE_BREAKING)
BIDI_RE: Final = re.compile(BIDI)
FILENAME_SEPARATORS_RE: Final = re.compile(FILENAME_SEPARATORS)
SPACE_RE: Final = re.compile(rf"^{SPACE}|{SPACE}$")
UUID_RE: Final = re.compile(UUID_PATTERN)
LANGUAGE_RE: Final = re.compile(LANGUAGE_PATTERN)
EMAIL_RE: Final = re.compile(EMAIL_PATTERN)
SPECIAL_USE_RE: Final = re.compile(SPECIAL_USE_PATTERN)
CONTENT_TYPE_RE: Final = re.compile(CONTENT_TYPE_PATTERN)
FILE_TYPE_RE: Final = re.compile(FILE_TYPE_PATTERN)
REQUESTED_AT_RE: Final = re.compile(REQUESTED_AT_PATTERN)

# IANA zone names from the `tzdata` package, pinned to one version in pyproject.toml: the
# machine's own tz database differs from host to host, and an enum built from it would make
# `bgworker schemas export --check` fail on the next machine. zoneinfo falls back to the same
# package when the system lacks a zone, so every listed name can be loaded.
TIMEZONES: Final = tuple(
    sorted(importlib.resources.files("tzdata").joinpath("zones").read_text("utf-8").split())
)
TIMEZONE_SET: Final = frozenset(TIMEZONES)
