"""The "my files" token: its lifetime and the clock rules of download links, its own
purpose (a download token is never one, nor the reverse), one canonical form (hypothesis
over mutations of real tokens), and the address check of ``POST /my-files``."""

from __future__ import annotations

import time
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgworker.links import tokens
from bgworker.web import my_files
from tests import helpers
from tests.unit.test_link_tokens import DAY, _mutate, _mutation, at, config


def test_round_trip_lower_cases_the_address_and_carries_the_expiry() -> None:
    now = time.time()
    token = at(now).my_files(" Ann@Example.COM ")
    assert token.startswith(tokens.MY_FILES_PREFIX) and tokens.is_canonical(token[2:])
    grant = at(now).verify_my_files(token)
    assert grant == tokens.Requester("ann@example.com", int(now + 7 * DAY))


def test_lifetime_skew_and_max_age() -> None:
    now = time.time()
    token = at(now).my_files("a@x.org", lifetime=3600)
    assert at(now + 3600 + 59).verify_my_files(token).email == "a@x.org"  # within the skew
    with pytest.raises(tokens.SignatureExpiredError):
        at(now + 3600 + 61).verify_my_files(token)
    with pytest.raises(tokens.SignatureExpiredError):  # MAX_AGE_SECONDS only shortens it
        at(now + 120, max_age=30).verify_my_files(token)
    with pytest.raises(tokens.SuspiciousTokenError):  # "issued" an hour from now
        at(now).verify_my_files(at(now + 3600).my_files("a@x.org"))


def test_a_download_token_is_never_a_my_files_token_and_the_reverse() -> None:
    signer, rid = at(time.time()), uuid.uuid4()
    mine = signer.my_files("a@x.org")
    for download in (signer.general(rid), signer.bound(rid, "a@x.org")):
        with pytest.raises(tokens.SuspiciousTokenError):
            signer.verify_my_files(download)
        with pytest.raises(tokens.SuspiciousTokenError):  # prefixed: the salt still differs
            signer.verify_my_files(tokens.MY_FILES_PREFIX + download.removeprefix("u."))
    for caller in (None, "a@x.org"):
        with pytest.raises(tokens.SuspiciousTokenError):
            signer.verify(mine, caller)
        with pytest.raises(tokens.SuspiciousTokenError):
            signer.verify(mine.removeprefix(tokens.MY_FILES_PREFIX), caller)


def test_another_key_does_not_verify_and_a_rotated_one_does() -> None:
    old = tokens.Signer(config()).my_files("a@x.org")
    other = config()
    other.secret_keys[0] = type(other.secret_keys[0])("another-key-0123456789")
    with pytest.raises(tokens.SuspiciousTokenError):
        tokens.Signer(other).verify_my_files(old)
    rotated = config()
    rotated.secret_keys.append(other.secret_keys[0])  # old key kept for verifying
    assert tokens.Signer(rotated).verify_my_files(old).email == "a@x.org"


_MINE = at(time.time()).my_files("ann@example.com")


@settings(max_examples=helpers.examples(2000), deadline=None)
@given(mutation=_mutation)
def test_no_mutation_of_a_my_files_token_verifies(mutation: tuple[str, object]) -> None:
    mutated = _mutate(_MINE, mutation)
    if mutated == _MINE:
        return
    with pytest.raises(tokens.TokenError):
        at(time.time()).verify_my_files(mutated)


@settings(max_examples=helpers.examples(500), deadline=None)
@given(text=st.text(max_size=400))
def test_any_text_is_refused_as_a_token(text: str) -> None:
    with pytest.raises(tokens.TokenError):
        at(time.time()).verify_my_files(text)


@settings(max_examples=helpers.examples(1000), deadline=None)
@given(text=st.text(max_size=400))
def test_an_accepted_address_is_one_line_with_an_at_sign(text: str) -> None:
    email = my_files.valid_email(text)
    if email is None:
        return
    local, _, domain = email.rpartition("@")
    assert local and domain and len(email) <= my_files.MAX_EMAIL_CHARS
    assert not any(c.isspace() or ord(c) < 0x20 for c in email)


def test_valid_email_examples() -> None:
    assert my_files.valid_email(" ann@example.com ") == "ann@example.com"
    for bad in ("", "ann", "@x.org", "ann@", "a b@x.org", "a@x.org\r\nBcc: b@y", 5, None):
        assert my_files.valid_email(bad) is None
    assert my_files.valid_email("a@" + "x" * 400) is None
