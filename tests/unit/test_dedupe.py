"""The dedupe fingerprint and the registration options of dedupe and inline-or-delay."""

from __future__ import annotations

import math
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bgworker import handlers, storage
from bgworker.contract import events
from bgworker.worker import dedupe

ALICE: dict[str, Any] = {"id": "alice", "email": "alice@example.com"}
# JSON values as producers send them (criteria come from outside; the contract refuses
# NUL and lone surrogates, which PostgreSQL cannot store).
TEXT = st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=8)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)


def _event(criteria: dict[str, Any], **fields: Any) -> events.FileRequested:
    defaults: dict[str, Any] = {"file_type": "report", "requester": ALICE}
    return events.FileRequested(id=uuid.uuid4(), criteria=criteria, **(defaults | fields))


@given(st.dictionaries(TEXT, JSON, max_size=6))
def test_the_fingerprint_ignores_key_order_and_the_request_id(criteria: dict[str, Any]) -> None:
    reversed_keys = dict(reversed(list(criteria.items())))
    one, two = _event(criteria), _event(reversed_keys, filename="other.csv", description="x")
    assert dedupe.fingerprint(one) == dedupe.fingerprint(two)
    assert len(dedupe.fingerprint(one)) == 64


@pytest.mark.parametrize(
    "change",
    [
        {"criteria": {"rows": 11}},
        {"requester": {"id": "bob", "email": "alice@example.com"}},
        {"requester": {**ALICE, "language": "fr"}},
        {"requester": {**ALICE, "timezone": "Europe/Paris"}},
        {"requester": None},
        {"file_type": "other"},
    ],
)
def test_another_file_type_criteria_or_requester_is_another_fingerprint(
    change: dict[str, Any],
) -> None:
    other = _event(change.pop("criteria", {"rows": 10}), **change)
    assert dedupe.fingerprint(_event({"rows": 10})) != dedupe.fingerprint(other)


async def _handler(ctx: handlers.JobContext, out: storage.FileWriter) -> None:
    await out.write(b"x")


@pytest.mark.parametrize("seconds", [0, -1, math.nan, math.inf])
def test_dedupe_seconds_must_be_a_positive_number(seconds: float) -> None:
    with pytest.raises(ValueError, match="dedupe_seconds"):
        handlers.Registry().register("report", _handler, dedupe_seconds=seconds)


def test_merged_registries_keep_dedupe_and_estimate() -> None:
    def estimate(criteria: dict[str, Any]) -> float:
        return 1.0

    one, combined = handlers.Registry(), handlers.Registry()
    one.register("report", _handler, dedupe_seconds=60, estimate=estimate)
    combined.merge(one)
    found = combined.find("report")
    assert found is not None
    assert found.dedupe_seconds == 60 and found.estimate is estimate
