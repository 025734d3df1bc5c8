"""The access log's redaction rule, on paths alone (``access_log.redact``). The server's
own log and answers under hostile bytes: tests/integration/test_access_log.py."""

from __future__ import annotations

import uuid
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bgworker import settings as settings_mod
from bgworker.links import tokens
from bgworker.web import access_log

# Fixed ids and clock: the tokens name the parametrized tests, the same in every xdist worker.
SIGNER = tokens.Signer(
    settings_mod.TokenSettings(secret_keys=["k" * 32]), clock=lambda: 1_800_000_000.0
)
TOKEN = SIGNER.general(uuid.UUID(int=1))
BOUND = SIGNER.bound(uuid.UUID(int=2), "alice")


@pytest.mark.parametrize(
    ("path", "written"),
    [
        (f"/download/{TOKEN}", "/download/<token>"),
        (f"/download//{TOKEN}", "/download/<token>"),
        (f"/download/x/{TOKEN}", "/download/<token>"),
        (f"/status//{BOUND}", "/status/<token>"),
        (f"/bundle/{TOKEN}", "/bundle/<token>"),
        (f"/bundle/{TOKEN}/zip", "/bundle/<token>"),
        (f"//download/{TOKEN}", "//download/<token>"),
        (f"/files/download/{TOKEN}", "/files/download/<token>"),
        (f"/DOWNLOAD/{TOKEN}", "/DOWNLOAD/<token>"),
        (f"/{TOKEN}", "/<redacted>"),
        (f"/admin/{TOKEN}/x", "/admin/<redacted>/x"),
        (f"/x;{TOKEN}", "/<redacted>"),
        # Other characters mixed in do not cut a token into short, harmless runs.
        ("/" + "!".join(TOKEN[i : i + 5] for i in range(0, len(TOKEN), 5)), "/<redacted>"),
        ("/" + "".join(f"%{ord(c):02X}" for c in TOKEN), "/<redacted>"),
        ("/download", "/download"),
        ("/download/", "/download/"),
        ("/healthz", "/healthz"),
        ("/wp-login.php", "/wp-login.php"),
        # The console's request ids and content hashes stay readable.
        (f"/admin/requests/{uuid.UUID(int=7)}", f"/admin/requests/{uuid.UUID(int=7)}"),
        ("/admin/dead-letters/" + "ab" * 32, "/admin/dead-letters/" + "ab" * 32),
        # A decoded line break can never start a forged line; the raw form is written.
        ("/a%0Ab", "/a%0Ab"),
        ("/a\nb\x7f", "/a%0Ab%7F"),
    ],
)
def test_redact(path: str, written: str) -> None:
    assert access_log.redact(path) == written


@pytest.mark.parametrize(
    ("method", "written"),
    [("GET", "GET"), ("PROPFIND", "PROPFIND"), (TOKEN, "<method>"), ("get", "<method>")],
)
def test_method(method: str, written: str) -> None:
    # Any tchar sequence is a valid method, a token too.
    assert access_log.method(method) == written


_PIECES = st.lists(
    st.one_of(
        st.sampled_from(["", "download", "status", "admin", "x", "..", "%2F", ";"]),
        st.text(max_size=12),
    ),
    max_size=5,
)


@given(_PIECES, _PIECES, st.sampled_from([TOKEN, BOUND]), st.booleans(), st.text(max_size=3))
def test_no_token_survives_any_path(
    before: list[str], after: list[str], token: str, encode: bool, glue: str
) -> None:
    """A token anywhere in a path, whole or percent-encoded, glued to anything."""
    spelt = quote(token, safe="") if not encode else "".join(f"%{ord(c):02X}" for c in token)
    path = "/".join(["", *before, glue + spelt + glue, *after])
    written = access_log.redact(path)
    signature = token.rsplit(".", 1)[-1]
    assert token not in written and signature not in written
    assert all(0x21 <= ord(c) <= 0x7E for c in written.replace("/", ""))
