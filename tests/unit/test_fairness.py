"""Fair share's outside inputs: the tenant a producer sends, and the limits an operator
sets in the environment."""

from __future__ import annotations

import json
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bgworker import settings as settings_mod
from bgworker.contract import event_fields, events, fairness, patterns


def _event(**fields: object) -> bytes:
    return json.dumps({"id": str(uuid.uuid4()), "file_type": "blob", **fields}).encode()


@given(st.text(max_size=120))
def test_a_tenant_is_accepted_exactly_when_it_is_one_short_line(tenant: str) -> None:
    fits = 1 <= len(tenant) <= event_fields.MAX_TENANT_LENGTH and not (
        patterns.LINE_BREAKING_RE.search(tenant)
    )
    try:
        event = events.parse_file_requested(_event(tenant=tenant))
    except events.InvalidEventError as exc:
        assert not fits
        assert "tenant" in str(exc)
        return
    assert fits
    assert events.tenant_of(event) == tenant
    again = events.parse_file_requested(event.model_dump_json().encode())
    assert events.tenant_of(again) == tenant


def test_the_tenant_defaults_to_the_requester_then_to_the_shared_one() -> None:
    with_requester = events.parse_file_requested(_event(requester={"id": "u1"}))
    assert events.tenant_of(with_requester) == "u1"
    assert events.tenant_of(events.parse_file_requested(_event())) == ""
    both = events.parse_file_requested(_event(tenant="acme", requester={"id": "u1"}))
    assert events.tenant_of(both) == "acme"


_NAME = st.text(st.characters(exclude_characters=",=\r\n", codec="utf-8"), min_size=1).filter(
    lambda n: n.strip() == n
)
_LIMITS = st.dictionaries(_NAME, st.integers(1, fairness.MAX_LIMIT), max_size=5)


@given(_LIMITS)
def test_limits_read_from_pairs(limits: dict[str, int]) -> None:
    text = ",".join(f"{name}={cap}" for name, cap in limits.items())
    assert fairness.FairnessSettings(tenant_limits=text).tenant_limits == limits


@given(
    st.dictionaries(
        st.text(st.characters(exclude_characters="\r\n", codec="utf-8"), min_size=1),
        st.integers(1, fairness.MAX_LIMIT),
        max_size=5,
    )
)
def test_limits_read_from_json_hold_any_one_line_name(limits: dict[str, int]) -> None:
    parsed = fairness.FairnessSettings(file_type_limits=json.dumps(limits))
    assert parsed.file_type_limits == limits


@given(st.text(max_size=40))
def test_any_limits_text_is_read_or_refused_with_a_validation_error(text: str) -> None:
    try:
        fairness.FairnessSettings(tenant_limits=text)
    except ValueError:  # pydantic's ValidationError, and JSON errors, are ValueErrors
        pass


@pytest.mark.parametrize("text", ["a=0", "a=-1", "a", "=3", "a=x", "a=1000001", '{"a": 0}'])
def test_bad_limits_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        fairness.FairnessSettings(tenant_limits=text)


def test_limits_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BGWORKER_FAIRNESS__TENANT_IN_FLIGHT", "4")
    monkeypatch.setenv("BGWORKER_FAIRNESS__TENANT_LIMITS", "big=8, trial=1")
    monkeypatch.setenv("BGWORKER_FAIRNESS__FILE_TYPE_LIMITS", "ledger_export=2")
    limits = settings_mod.Settings().fairness
    assert limits.tenant_cap("big") == 8
    assert limits.tenant_cap("trial") == 1
    assert limits.tenant_cap("anyone") == 4
    assert limits.file_type_cap("ledger_export") == 2
    assert limits.file_type_cap("other") is None
    assert limits.capping
    assert not fairness.FairnessSettings().capping
    assert fairness.FairnessSettings().tenant_cap("anyone") is None
