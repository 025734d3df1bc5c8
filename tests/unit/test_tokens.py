"""Download tokens: signature, age, requester binding and key rotation."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import itsdangerous
import pytest
from pydantic import SecretStr

from bgworker.links import tokens
from bgworker.settings import TokenSettings

OLD, NEW = "old-key-0123456789", "new-key-9876543210"


def signer(*keys: str, max_age: int | None = 3600) -> tokens.Signer:
    return tokens.Signer(
        TokenSettings(secret_keys=[SecretStr(k) for k in keys], max_age_seconds=max_age)
    )


def test_general_token_round_trip() -> None:
    rid = uuid.uuid4()
    grant = signer(NEW).verify(signer(NEW).general(rid), None)
    assert grant == tokens.Grant(rid, None)
    # Anyone holding a general link may use it.
    assert signer(NEW).verify(signer(NEW).general(rid), "someone").request_id == rid


def test_bound_token_needs_the_requester() -> None:
    rid, s = uuid.uuid4(), signer(NEW)
    token = s.bound(rid, "alice")
    assert s.verify(token, "alice") == tokens.Grant(rid, "alice")
    with pytest.raises(tokens.NotRequesterError):
        s.verify(token, "mallory")
    with pytest.raises(tokens.NotRequesterError):
        s.verify(token, None)
    with pytest.raises(tokens.NotRequesterError):
        s.verify(token, "")


def test_a_general_link_names_no_requester_and_a_bound_one_refuses_others() -> None:
    rid, s = uuid.uuid4(), signer(NEW)
    assert s.verify(s.general(rid), None).requester_id is None
    with pytest.raises(tokens.NotRequesterError):
        s.verify(s.bound(rid, "alice"), None)


def test_old_key_still_verifies_while_listed_after_rotation() -> None:
    rid = uuid.uuid4()
    general = signer(OLD).general(rid)
    bound = signer(OLD).bound(rid, "alice")
    rotated = signer(OLD, NEW)  # newest last: NEW signs, both verify
    assert rotated.verify(general, None).request_id == rid
    assert rotated.verify(bound, "alice").request_id == rid
    # The rotated signer signs with the new key: a signer holding only NEW accepts it.
    assert signer(NEW).verify(rotated.general(rid), None).request_id == rid
    with pytest.raises(tokens.SuspiciousTokenError):
        signer(OLD).verify(rotated.general(rid), None)


def test_old_key_fails_once_removed() -> None:
    rid = uuid.uuid4()
    general = signer(OLD).general(rid)
    bound = signer(OLD).bound(rid, "alice")
    with pytest.raises(tokens.SuspiciousTokenError):
        signer(NEW).verify(general, None)
    with pytest.raises(tokens.SuspiciousTokenError):
        signer(NEW).verify(bound, "alice")


def test_general_token_cannot_be_used_as_bound() -> None:
    rid, s = uuid.uuid4(), signer(NEW)
    general = s.general(rid)
    with pytest.raises(tokens.SuspiciousTokenError):
        s.verify("u." + general, "alice")


def test_bound_token_cannot_be_used_as_general() -> None:
    rid, s = uuid.uuid4(), signer(NEW)
    bound = s.bound(rid, "alice")
    # Stripping the marker makes it look general: the general salt rejects it.
    with pytest.raises(tokens.SuspiciousTokenError):
        s.verify(bound.removeprefix("u."), None)
    with pytest.raises(tokens.SuspiciousTokenError):
        s.verify(bound.removeprefix("u."), "alice")


@pytest.mark.parametrize(
    "mangle",
    [
        # A signature character changed (not the last: its low bits are padding).
        lambda t: t[:-10] + ("A" if t[-10] != "A" else "B") + t[-9:],
        # A payload character changed.
        lambda t: ("A" if t[0] != "A" else "B") + t[1:],
        lambda t: "x" + t,
        lambda t: t.split(".")[0],  # signature dropped
        lambda t: "",
        lambda t: "u.",
        lambda t: "not-a-token",
    ],
)
def test_tampered_token_is_suspicious(mangle: Callable[[str], str]) -> None:
    s = signer(NEW)
    with pytest.raises(tokens.SuspiciousTokenError):
        s.verify(mangle(s.general(uuid.uuid4())), None)


def test_payload_swap_is_suspicious() -> None:
    """Another request id under a valid-looking signature is rejected."""
    s = signer(NEW)
    token = s.general(uuid.uuid4())
    other = s.general(uuid.uuid4())
    forged = other.split(".")[0] + "." + ".".join(token.split(".")[1:])
    with pytest.raises(tokens.SuspiciousTokenError):
        s.verify(forged, None)


def test_signed_payload_without_a_request_id_is_suspicious() -> None:
    s = signer(NEW)
    raw = itsdangerous.URLSafeTimedSerializer(
        NEW, salt=TokenSettings().salt + tokens.GENERAL_SALT_SUFFIX
    )
    for payload in ({"x": 1}, {"r": "not-a-uuid"}, ["r"], "r"):
        with pytest.raises(tokens.SuspiciousTokenError):
            s.verify(raw.dumps(payload), None)


def test_expired_token() -> None:
    now = time.time()
    rid = uuid.uuid4()
    s = signer(NEW, max_age=60)
    general, bound = s.general(rid), s.bound(rid, "alice")
    # The default skew allowance (60 s) extends max_age: 60 + 60 s old still passes.
    later = tokens.Signer(s_config(NEW, max_age=60), clock=lambda: now + 119)
    assert later.verify(general, None).request_id == rid
    much_later = tokens.Signer(s_config(NEW, max_age=60), clock=lambda: now + 130)
    with pytest.raises(tokens.SignatureExpiredError):
        much_later.verify(general, None)
    # Expiry is reported before the requester check: the holder learns only "expired".
    with pytest.raises(tokens.SignatureExpiredError):
        much_later.verify(bound, "alice")


def s_config(*keys: str, max_age: int | None = None) -> TokenSettings:
    return TokenSettings(secret_keys=[SecretStr(k) for k in keys], max_age_seconds=max_age)


def test_no_key_is_a_clear_error() -> None:
    with pytest.raises(tokens.MissingKeyError, match="BGWORKER_TOKENS__SECRET_KEYS"):
        tokens.Signer(TokenSettings())
