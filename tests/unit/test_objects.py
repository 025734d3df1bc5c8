"""What the S3 stream mode passes on to S3 from a client's Range header (hostile input)."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from bgworker.web import objects

ETAG = '"' + "a" * 64 + '"'
ONE_RANGE = re.compile(r"bytes=(\d+-\d*|-\d+)")


@given(st.text(), st.one_of(st.none(), st.text()))
def test_only_one_well_formed_byte_range_is_ever_passed_on(
    wanted: str, if_range: str | None
) -> None:
    passed = objects.passed_range(wanted, if_range, ETAG)
    if passed is not None:
        assert ONE_RANGE.fullmatch(passed) and passed.isascii()
        assert "\r" not in passed and "\n" not in passed


def test_ranges() -> None:
    assert objects.passed_range("bytes=0-9", None, ETAG) == "bytes=0-9"
    assert objects.passed_range(" bytes=-17 ", None, ETAG) == "bytes=-17"
    assert objects.passed_range("bytes=5-", ETAG, ETAG) == "bytes=5-"
    for ignored in ("bytes=0-1,5-9", "items=0-9", "bytes=0-9\r\nX-Evil: 1", "bytes=٣-٤", ""):
        assert objects.passed_range(ignored, None, ETAG) is None
    # If-Range: only the strong entity tag keeps the range (a date or a stale tag: all).
    for stale in ('"old"', "W/" + ETAG, "Wed, 21 Oct 2015 07:28:00 GMT"):
        assert objects.passed_range("bytes=0-9", stale, ETAG) is None
