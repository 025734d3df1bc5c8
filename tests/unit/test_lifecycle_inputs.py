"""What producers and operators hand the request lifecycle (issue 24), under hypothesis:
a ``CancelRequested`` body of any bytes is either a cancel or an ``InvalidEventError``;
an address to erase is matched exactly, whatever it holds, never inside a longer one; the
audit hash confirms the address it was made from and no other."""

from __future__ import annotations

import json
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bgworker.contract import events, retention
from bgworker.ops import erasure

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
LOCAL = st.from_regex(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,20}(\.[A-Za-z0-9_-]{1,8})?", fullmatch=True
)
DOMAIN = st.from_regex(r"[a-z][a-z0-9-]{0,12}[a-z0-9]\.(com|org|io|example)", fullmatch=True)


@given(st.binary(max_size=300) | JSON.map(lambda v: json.dumps(v).encode()))
def test_any_cancel_body_is_a_cancel_or_refused(body: bytes) -> None:
    try:
        cancel = events.parse_cancel_requested(body)
    except events.InvalidEventError as exc:
        assert str(exc)
    else:
        assert isinstance(cancel.id, uuid.UUID)


@given(st.uuids(), st.sampled_from([None, 1]))
def test_a_cancel_names_only_an_id(request_id: uuid.UUID, version: int | None) -> None:
    body: dict[str, object] = {"id": str(request_id)}
    if version is not None:
        body["schema_version"] = version
    assert events.parse_cancel_requested(json.dumps(body).encode()).id == request_id
    with pytest.raises(events.InvalidEventError):
        events.parse_cancel_requested(json.dumps({**body, "reason": "x"}).encode())


@given(LOCAL, DOMAIN, st.sampled_from(["jo", "a.", "x-", "_"]), st.sampled_from([".au", "x", "-b"]))
def test_an_address_is_matched_whole_and_in_any_case(
    local: str, domain: str, before: str, after: str
) -> None:
    address = f"{local}@{domain}"
    pattern = erasure.names(erasure.Subject.requester(address.upper()))
    assert pattern.search(json.dumps({"requester": {"email": address}}).encode())
    assert pattern.search(f"refused <{address}>: mailbox full".encode())
    assert not pattern.search(f"{before}{address}".encode())
    assert not pattern.search(f"{address}{after}".encode())


@given(LOCAL, DOMAIN, st.binary(min_size=16, max_size=16))
def test_the_audit_hash_confirms_only_its_own_address(local: str, domain: str, salt: bytes) -> None:
    subject = erasure.Subject.requester(f" {local}@{domain} ")
    assert subject.value == f"{local}@{domain}".lower()
    assert erasure.Subject.requester(f"{local}@{domain}".upper()).digest(salt) == subject.digest(
        salt
    )
    assert erasure.Subject.requester(f"x{local}@{domain}").digest(salt) != subject.digest(salt)
    assert subject.value not in subject.digest(salt)


@given(st.text(max_size=50).filter(lambda t: "@" not in t))
def test_forget_refuses_what_is_not_an_address(text: str) -> None:
    with pytest.raises(ValueError, match="email address"):
        erasure.parse_requester(text)


def test_the_retention_defaults_are_the_documented_ones() -> None:
    policy = retention.RetentionSettings()
    assert (policy.criteria_days, policy.addresses_days, policy.attempts_days) == (30, 30, 30)
    assert (policy.outbox_days, policy.dead_letters_days, policy.rows_days) == (30, 14, 90)
    assert policy.seconds("dead_letters") == 14 * 86400


@given(st.binary(max_size=300))
def test_a_letter_of_any_bytes_never_breaks_the_tenant_matcher(body: bytes) -> None:
    # Dead letters need not be valid events, nor JSON: the matcher answers, never raises.
    assert erasure.letter_matcher(erasure.Subject.tenant("acme"))(body, b"") in (True, False)


@given(
    tenant=st.one_of(st.none(), st.text(min_size=1, max_size=20)),
    requester_id=st.one_of(st.none(), st.text(min_size=1, max_size=20)),
    subject=st.text(min_size=1, max_size=20),
)
def test_a_letter_is_a_tenants_exactly_when_its_event_counts_against_it(
    tenant: str | None, requester_id: str | None, subject: str
) -> None:
    event: dict[str, object] = {"id": str(uuid.uuid4()), "file_type": "blob"}
    if tenant is not None:
        event["tenant"] = tenant
    if requester_id is not None:
        event["requester"] = {"id": requester_id}
    counts_against = tenant if tenant is not None else requester_id
    matches = erasure.letter_matcher(erasure.Subject.tenant(subject))
    assert matches(json.dumps(event).encode(), b"") == (counts_against == subject)
