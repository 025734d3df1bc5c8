"""Content-Disposition (RFC 6266 + RFC 8187). The security headers are tested as the servers
send them: tests/integration/test_downloads.py and test_admin.py."""

from __future__ import annotations

from urllib.parse import unquote

import pytest

from bgworker.web import headers


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
