"""The texts a requester is shown for a failure: one for every reason, none of them
carrying anything from an exception."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bgworker.contract import requester_texts, states


def test_every_reason_has_a_plain_text() -> None:
    for reason in states.Reason:
        text = requester_texts.failure(reason)
        assert text and text.isprintable() and "Error" not in text


@given(st.one_of(st.none(), st.text(max_size=200)))
def test_any_reason_even_an_unknown_one_gives_a_fixed_text(reason: str | None) -> None:
    # Whatever a row holds as its reason, the text comes from the table, never from it.
    text = requester_texts.failure(reason)
    known = {requester_texts.failure(r) for r in states.Reason}
    assert text in known | {requester_texts.failure(None)}
