"""Content-Disposition (RFC 6266 + RFC 8187). The security headers are tested as the servers
send them: tests/integration/test_downloads.py and test_admin.py."""

from __future__ import annotations

import json
import uuid
from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgworker.contract import events
from bgworker.web import headers
from tests import helpers


def _params(value: str) -> dict[str, str]:
    disposition, *rest = [part.strip() for part in value.split(";")]
    out = {"": disposition}
    for part in rest:
        key, _, val = part.partition("=")
        out[key] = val
    return out


def test_plain_ascii_name_has_no_extended_parameter() -> None:
    assert headers.content_disposition("report.csv") == 'attachment; filename="report.csv"'


def test_inline_disposition() -> None:
    assert headers.content_disposition("a.pdf", "inline") == 'inline; filename="a.pdf"'


def test_non_ascii_name_has_ascii_fallback_and_utf8_filename_star() -> None:
    name = "Résumé été.pdf"
    value = headers.content_disposition(name)
    params = _params(value)
    assert params["filename"] == '"Resume ete.pdf"'
    assert params["filename*"].startswith("UTF-8''")
    assert unquote(params["filename*"].removeprefix("UTF-8''"), encoding="utf-8") == name
    assert value.isascii()


def test_name_with_no_ascii_at_all_falls_back_to_download() -> None:
    name = "東京.csv"
    params = _params(headers.content_disposition(name))
    assert params["filename"] == '"download.csv"'
    assert unquote(params["filename*"].removeprefix("UTF-8''")) == name
    params = _params(headers.content_disposition("東京"))
    assert params["filename"] == '"download"'


@pytest.mark.parametrize(
    ("name", "fallback"),
    [
        ('a"b.csv', "ab.csv"),
        ("a\\b.csv", "ab.csv"),
        ("a/b.csv", "ab.csv"),
        ("a;b.csv", "ab.csv"),
        ('"\\/;', "download"),
        ("tab\there.csv", "tabhere.csv"),
    ],
)
def test_dangerous_characters_are_stripped_from_the_fallback(name: str, fallback: str) -> None:
    value = headers.content_disposition(name)
    params = _params(value)
    assert params["filename"] == f'"{fallback}"'
    # The exact name survives, percent-encoded, in filename*; nothing raw breaks the header.
    assert unquote(params["filename*"].removeprefix("UTF-8''")) == name
    quoted = value.split("filename*=")[1]
    assert not set(quoted) & set('"\\/; \t')
    assert "\t" not in value and "\n" not in value


# -- names that used to give an unusable or misleading fallback (issue 9) -----------------

_DOTS_AND_ESCAPES = [
    "\u2025",  # TWO DOT LEADER: NFKD ".."
    "\uff0e\uff0e",  # two FULLWIDTH FULL STOPs
    "\u2025.pdf",
    "..%2Fetc%2Fpasswd",
    "%2e%2e",
    ". . .",
    "\uff0e",
]


@pytest.mark.parametrize("name", _DOTS_AND_ESCAPES)
def test_fallback_is_never_empty_dots_only_or_a_percent_escape(name: str) -> None:
    params = _params(headers.content_disposition(name))
    fallback = params["filename"].strip('"')
    assert fallback and fallback.strip(".") == fallback.lstrip(".")
    assert not fallback.startswith(".")
    assert fallback.strip(". ") != ""
    assert "%" not in fallback
    # The exact name still travels in filename* (RFC 8187).
    assert unquote(params["filename*"].removeprefix("UTF-8''"), encoding="utf-8") == name


@settings(max_examples=helpers.examples(500), deadline=None)
@given(st.text(min_size=1, max_size=40))
def test_any_name_gives_a_safe_fallback(name: str) -> None:
    value = headers.content_disposition(name)
    assert value.isascii()
    fallback = _params(value)["filename"]
    assert fallback.startswith('"') and fallback.endswith('"')
    inner = fallback[1:-1]
    assert inner and not inner.startswith(".") and inner.strip(". ") == inner.strip()
    assert not any(c in inner for c in '"\\/;%') and inner.isprintable()


@pytest.mark.parametrize(
    "name", ["invoice\u202efdp.exe", "a\u2066b.pdf", "x\u200fy.csv", "\u061cname.txt"]
)
def test_bidi_controls_never_reach_a_header_or_subject(name: str) -> None:
    """Refused at validation, so neither Content-Disposition nor the email subject ever
    gets one (``invoice<U+202E>fdp.exe`` would display as "invoiceexe.pdf")."""
    with pytest.raises(events.InvalidEventError, match="bidirectional"):
        events.parse_file_requested(
            json.dumps(
                {
                    "schema_version": 1,
                    "id": str(uuid.uuid4()),
                    "file_type": "x",
                    "criteria": {},
                    "filename": name,
                }
            ).encode()
        )
