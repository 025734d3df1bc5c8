"""Link lifecycle in the token: lifetime and clock skew (the signer's clock injected, no
global patched), generation, status-only links, link modes, and one canonical form per
grant (hypothesis over mutations of real tokens)."""

from __future__ import annotations

import time
import uuid
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from bgworker.links import tokens
from bgworker.settings import Settings, TokenSettings
from tests import helpers

KEY = "key-0123456789abcdef"
DAY = 86400.0


def config(*, max_age: int | None = None, skew: float = 60.0) -> TokenSettings:
    return TokenSettings(
        secret_keys=[SecretStr(KEY)], max_age_seconds=max_age, clock_skew_seconds=skew
    )


def at(t: float, **kw: int | float | None) -> tokens.Signer:
    return tokens.Signer(config(**kw), clock=lambda: t)  # type: ignore[arg-type]


def test_default_link_has_no_age_limit_of_its_own() -> None:
    """The old default killed links after one day while files lived seven: now the file's
    expires_at (checked by the server) is the only limit unless MAX_AGE_SECONDS is set."""
    now, rid = time.time(), uuid.uuid4()
    token = at(now).general(rid)
    assert at(now + 6 * DAY).verify(token, None).request_id == rid
    with pytest.raises(tokens.SignatureExpiredError):
        at(now + 2 * DAY, max_age=int(DAY)).verify(token, None)


def test_signer_clock_ahead_within_the_skew_is_accepted() -> None:
    now, rid = time.time(), uuid.uuid4()
    ahead = at(now + 5).general(rid)  # a worker whose clock runs 5 s fast
    assert at(now).verify(ahead, None).request_id == rid
    assert at(now, max_age=60).verify(ahead, None).request_id == rid
    with pytest.raises(tokens.SuspiciousTokenError):
        at(now, skew=0).verify(ahead, None)
    # Far in the future: not a clock difference, refused as not valid.
    with pytest.raises(tokens.SuspiciousTokenError):
        at(now).verify(at(now + 61).general(rid), None)


def test_generation_and_status_only_round_trip() -> None:
    s, rid = at(time.time()), uuid.uuid4()
    assert s.verify(s.general(rid), None) == tokens.Grant(rid, None, 0, False)
    grant = s.verify(s.general(rid, generation=3, status_only=True), None)
    assert grant == tokens.Grant(rid, None, 3, True)
    grant = s.verify(s.bound(rid, "ann", generation=2), "ann")
    assert grant == tokens.Grant(rid, "ann", 2, False)


def test_issue_binds_only_when_the_signer_binds() -> None:
    rid = uuid.uuid4()
    general = tokens.Signer(config()).issue(rid, requester_id="42")
    assert tokens.Signer(config()).verify(general, None).requester_id is None
    bound = tokens.Signer(config(), bind=True).issue(rid, requester_id="42")
    with pytest.raises(tokens.NotRequesterError):
        tokens.Signer(config()).verify(bound, None)
    # No requester id: a general link even in bound mode.
    no_id = tokens.Signer(config(), bind=True).issue(rid)
    assert tokens.Signer(config()).verify(no_id, None).requester_id is None


@pytest.mark.parametrize(
    ("mode", "header", "binds", "warns_without_callable"),
    [
        ("auto", None, False, False),  # the default: general links, usable by anyone
        ("auto", "X-User", True, False),
        ("general", "X-User", False, False),
        ("bound", "X-User", True, False),
        ("bound", None, True, True),  # only a server with an identity callable can check
    ],
)
def test_link_modes(
    mode: str, header: str | None, binds: bool, warns_without_callable: bool
) -> None:
    s = Settings.model_validate({"tokens": {"link_mode": mode}, "web": {"identity_header": header}})
    assert tokens.binds_requester(s) is binds
    warning = tokens.unusable_links_warning(s, identity_callable=False)
    assert (warning is not None) is warns_without_callable
    assert tokens.unusable_links_warning(s, identity_callable=True) is None


def test_default_settings_issue_general_links() -> None:
    assert tokens.binds_requester(Settings()) is False


def test_request_status_url_is_status_only() -> None:
    s = Settings.model_validate(
        {"tokens": {"secret_keys": KEY}, "web": {"public_url": "https://files.example.com/"}}
    )
    rid = uuid.uuid4()
    url = tokens.status_url(s, rid)
    assert url.startswith("https://files.example.com/status/")
    grant = tokens.Signer(s.tokens).verify(url.rsplit("/", 1)[1], None)
    assert grant == tokens.Grant(rid, None, 0, True)


# -- one canonical form per grant ------------------------------------------------------

_SIGNER = tokens.Signer(config())
_RID = uuid.UUID("0a2899be-dc23-450e-b95e-01b72f0b4be6")
_TOKENS = [
    _SIGNER.general(_RID),
    _SIGNER.bound(_RID, "alice"),
    _SIGNER.general(_RID, generation=1, status_only=True),
]
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _flip_last(token: str, bits: int) -> str:
    i = _ALPHABET.index(token[-1]) ^ bits
    return token[:-1] + _ALPHABET[i]


_mutation = st.one_of(
    # Appended bytes, percent-encoded junk, padding.
    st.tuples(st.just("append"), st.text(min_size=1, max_size=6)),
    st.tuples(st.just("append"), st.sampled_from(["=", "==", "%3D", "%3D%3D", ".", "%"])),
    st.tuples(st.just("append_pct"), st.text(min_size=1, max_size=3)),
    # Unused (and used) low bits of the last character.
    st.tuples(st.just("flip_last"), st.integers(1, 63)),
    # A character's case changed, anywhere.
    st.tuples(st.just("case"), st.integers(0, 10_000)),
    st.tuples(
        st.just("insert"), st.tuples(st.integers(0, 10_000), st.text(min_size=1, max_size=2))
    ),
    st.tuples(st.just("drop"), st.integers(0, 10_000)),
)


def _mutate(token: str, mutation: tuple[str, object]) -> str:
    kind, arg = mutation
    if kind == "append":
        return token + str(arg)
    if kind == "append_pct":
        return token + quote(str(arg), safe="")
    if kind == "flip_last":
        assert isinstance(arg, int)
        return _flip_last(token, arg)
    if kind == "case":
        assert isinstance(arg, int)
        i = arg % len(token)
        return token[:i] + token[i].swapcase() + token[i + 1 :]
    if kind == "insert":
        assert isinstance(arg, tuple)
        i = arg[0] % (len(token) + 1)
        return token[:i] + str(arg[1]) + token[i:]
    assert isinstance(arg, int)
    i = arg % len(token)
    return token[:i] + token[i + 1 :]


@settings(max_examples=helpers.examples(3000), deadline=None)
@given(index=st.integers(0, len(_TOKENS) - 1), mutation=_mutation)
def test_no_mutation_of_a_token_verifies(index: int, mutation: tuple[str, object]) -> None:
    token = _TOKENS[index]
    mutated = _mutate(token, mutation)
    if mutated == token:
        return  # e.g. swapcase of a digit: the same token
    with pytest.raises(tokens.TokenError):
        _SIGNER.verify(mutated, "alice")


def test_canonical_tokens_verify_and_known_lenient_forms_do_not() -> None:
    for token in _TOKENS:
        assert tokens.is_canonical(token)
        assert _SIGNER.verify(token, "alice").request_id == _RID
    general = _TOKENS[0]
    # Each of these verified before the canonical check (itsdangerous decodes leniently).
    for lenient in (general + "=", general + "%3D", general + "é", _flip_last(general, 1)):
        assert not tokens.is_canonical(lenient)
        with pytest.raises(tokens.SuspiciousTokenError):
            _SIGNER.verify(lenient, None)
