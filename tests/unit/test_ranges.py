"""What a download answers to Range and the conditional headers (``ranges.decide``), for
every backend: hostile header values, and the RFC 9110 choices the module documents.
(These carry over the assertions of the S3 stream mode's former ``passed_range``.)"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bgworker.web import ranges

ETAG = '"' + "a" * 64 + '"'
SIZE = 5000

headers = st.one_of(st.none(), st.text(), st.sampled_from([ETAG, "W/" + ETAG, "*", '"x"']))
range_values = st.one_of(
    st.none(),
    st.text(),
    st.builds(lambda a, b: f"bytes={a}-{b}", st.integers(0, 10**6), st.integers(0, 10**6)),
    st.builds(lambda a: f"bytes={a}-", st.integers(0, 10**6)),
    st.builds(lambda a: f"bytes=-{a}", st.integers(0, 10**6)),
)


def decide(
    range_: str | None,
    *,
    if_range: str | None = None,
    if_none_match: str | None = None,
    method: str = "GET",
    size: int = SIZE,
) -> ranges.Decision:
    return ranges.decide(
        method,
        range_=range_,
        if_range=if_range,
        if_none_match=if_none_match,
        etag=ETAG,
        size=size,
    )


@given(
    st.sampled_from(["GET", "HEAD"]),
    range_values,
    headers,
    headers,
    st.integers(0, 10**7),
)
def test_a_range_answered_always_lies_within_the_file(
    method: str, wanted: str | None, if_range: str | None, if_none_match: str | None, size: int
) -> None:
    decision = decide(
        wanted, if_range=if_range, if_none_match=if_none_match, method=method, size=size
    )
    if isinstance(decision, ranges.Part):
        assert 0 <= decision.start <= decision.end < size == decision.size
        assert decision.content_range == f"bytes {decision.start}-{decision.end}/{size}"
        assert method == "GET" and wanted is not None and "," not in wanted
    if isinstance(decision, ranges.Unsatisfiable):
        assert decision.size == size and decision.content_range == f"bytes */{size}"
        assert method == "GET"
    if if_range is not None and if_range.strip() != ETAG:
        # Section 13.1.5: a stale, weak or date validator never gets bytes of a range.
        assert not isinstance(decision, ranges.Part | ranges.Unsatisfiable)


@given(range_values, headers)
def test_if_none_match_with_the_tag_or_a_star_is_not_modified(
    wanted: str | None, if_range: str | None
) -> None:
    for tag in (ETAG, "*", "W/" + ETAG, f'"other", {ETAG}'):
        assert decide(wanted, if_range=if_range, if_none_match=tag) == ranges.NotModified()
        assert decide(None, if_none_match=tag, method="HEAD") == ranges.NotModified()
    assert not isinstance(decide(wanted, if_none_match='"other"'), ranges.NotModified)


def test_ranges() -> None:
    assert decide("bytes=0-9") == ranges.Part(0, 9, SIZE)
    assert decide(" bytes=-17 ") == ranges.Part(SIZE - 17, SIZE - 1, SIZE)
    assert decide("bytes=5-", if_range=ETAG) == ranges.Part(5, SIZE - 1, SIZE)
    assert decide("bytes=1000-1999") == ranges.Part(1000, 1999, SIZE)
    assert decide(f"bytes={SIZE - 5}-") == ranges.Part(SIZE - 5, SIZE - 1, SIZE)
    assert decide("bytes=10-999999") == ranges.Part(10, SIZE - 1, SIZE)  # last clamped
    assert decide("bytes=-999999") == ranges.Part(0, SIZE - 1, SIZE)  # the whole, as a 206
    assert decide("Bytes=0-9") == ranges.Part(0, 9, SIZE)  # the unit is case-insensitive
    assert ranges.Part(0, 9, SIZE).length == 10
    for ignored in (
        "bytes=0-1,5-9",  # several ranges: a server MAY ignore Range, a 416 would be wrong
        "items=0-9",  # a unit we do not know
        "bytes=0-9\r\nX-Evil: 1",
        "bytes=٣-٤",  # digits, but not ASCII ones
        "bytes=9-0",  # last before first: not a valid range
        "bytes=abc",
        "bytes=" + "9" * 30 + "-",  # no file is that big; int() never sees 30 digits
        "",
    ):
        assert decide(ignored) == ranges.Whole(), ignored
    # Range only on GET (section 14.2).
    assert decide("bytes=0-9", method="HEAD") == ranges.Whole()
    # If-Range: only the strong entity tag keeps the range (a date or a stale tag: all).
    for stale in ('"old"', "W/" + ETAG, "Wed, 21 Oct 2015 07:28:00 GMT"):
        assert decide("bytes=0-9", if_range=stale) == ranges.Whole()


def test_ranges_that_name_no_byte_are_unsatisfiable() -> None:
    for wanted in ("bytes=-0", "bytes=-00", f"bytes={SIZE}-", f"bytes={SIZE}-{SIZE + 9}"):
        assert decide(wanted) == ranges.Unsatisfiable(SIZE), wanted
    # An empty file has no byte to give, whatever the range.
    for wanted in ("bytes=0-", "bytes=-5", "bytes=0-0"):
        assert decide(wanted, size=0) == ranges.Unsatisfiable(0), wanted
    assert ranges.Unsatisfiable(SIZE).content_range == f"bytes */{SIZE}"
