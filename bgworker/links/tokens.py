"""Signed download and status tokens (itsdangerous), optionally bound to the requester.

A token names a request, the request's link generation (``bgworker revoke`` raises the
row's, so every earlier token stops working) and, for a bound link, the requester; a
status-only token opens the status and never the file. A link lives as long as its file:
the server checks the file's ``expires_at``; ``MAX_AGE_SECONDS``, when set, can only
shorten that. ``CLOCK_SKEW_SECONDS`` allows for hosts whose clocks disagree (a worker 5 s
ahead signs a token "from the future"). Keys rotate: the newest key signs, every listed key
verifies.

One grant, one URL: itsdangerous decodes base64 leniently (characters outside the alphabet
are dropped, padding is optional, the unused low bits of the last character are ignored),
so without a check of its own many strings would verify as the same token, which defeats
denylists and log correlation. ``verify`` therefore refuses any token that is not exactly
in the form ``issue`` writes before it looks at the signature.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import itsdangerous

from bgworker import settings as settings_mod

log = logging.getLogger(__name__)

GENERAL_SALT_SUFFIX: Final = ".general"
BOUND_SALT_SUFFIX: Final = ".requester"
BOUND_PREFIX: Final = "u."
# A requester's "my files" link (``my_files``): its own salt, so a download token can never
# be read as one and vice versa, and its own prefix, so each is refused by its form first.
MY_FILES_SALT_SUFFIX: Final = ".my-files"
MY_FILES_PREFIX: Final = "m."
UNSUBSCRIBE_SALT_SUFFIX: Final = ".unsubscribe"
# Bundle links (docs/bundles.md) are signed under a salt of their own: a request's token
# never opens a bundle's page, nor a bundle's token a request.
BUNDLE_SALT_SUFFIX: Final = ".bundle"

# itsdangerous' default signer: HMAC-SHA1, whose 20-byte digest is 27 base64url characters.
_SIGNATURE_BYTES: Final = hashlib.sha1().digest_size
# payload (optionally "."-prefixed when zlib-compressed), timestamp, signature: base64url
# without padding, joined by dots (itsdangerous' URLSafeTimedSerializer).
_SHAPE: Final = re.compile(
    r"(?P<prefix>u\.)?(?P<payload>\.?[A-Za-z0-9_-]+)\.(?P<ts>[A-Za-z0-9_-]+)\.(?P<sig>[A-Za-z0-9_-]+)"
)

Clock = Callable[[], float]


class TokenError(Exception):
    """Base: the token does not grant access."""


class SuspiciousTokenError(TokenError):
    """Not in canonical form, tampered, signed with a key we do not hold, or issued further
    in the future than the clock-skew allowance (HTTP 400)."""


class SignatureExpiredError(TokenError):
    """Valid signature, but older than ``MAX_AGE_SECONDS`` (HTTP 410)."""


class NotRequesterError(TokenError):
    """A requester-bound token presented by someone else, or by nobody (HTTP 403)."""


class MissingKeyError(RuntimeError):
    pass


@dataclass(frozen=True)
class Requester:
    """What a my-files token grants: the files requested with this email address."""

    email: str  # lower case (``normal_email``), as the listing compares it
    expires_at: int  # unix seconds


def normal_email(address: str) -> str:
    """The form a my-files token carries and the listing compares (``lower``, as the
    requests' email index): one address, one link, whatever its capitals."""
    return address.strip().lower()


@dataclass(frozen=True)
class Grant:
    request_id: uuid.UUID
    requester_id: str | None  # None for general links
    generation: int = 0  # the row's link generation when issued (0: tokens from before 0004)
    status_only: bool = False


def binds_requester(settings: settings_mod.Settings) -> bool:
    """Whether links are bound to the requester's id. The worker (which signs) and the
    server (which checks) both decide from the settings, so they agree. ``auto`` binds
    only when the server can tell who is calling (an identity header is configured);
    ``bound`` is for a server given an ``identity`` callable in code."""
    mode = settings.tokens.link_mode
    if mode == "auto":
        return settings.web.identity_header is not None
    return mode == "bound"


def unusable_links_warning(
    settings: settings_mod.Settings, *, identity_callable: bool
) -> str | None:
    """The warning ``serve`` and ``worker`` log at start when the settings would issue
    links nobody can use, else None."""
    if not binds_requester(settings) or settings.web.identity_header is not None:
        return None
    if identity_callable:
        return None
    return (
        "BGWORKER_TOKENS__LINK_MODE=bound but BGWORKER_WEB__IDENTITY_HEADER is unset: links "
        "for requesters with an id are bound to them, and a server without an identity "
        "header (or an identity callable passed to create_app) answers every such link 403. "
        "Set the header, or BGWORKER_TOKENS__LINK_MODE=auto"
    )


def warn_unusable_links(settings: settings_mod.Settings, *, identity_callable: bool) -> None:
    """Log ``unusable_links_warning`` as a WARNING when there is one (serve and worker)."""
    warning = unusable_links_warning(settings, identity_callable=identity_callable)
    if warning is not None:
        log.warning("%s", warning)


def _canonical_b64(segment: str) -> bytes | None:
    """The bytes of an unpadded base64url segment, or None unless re-encoding them gives
    the segment back exactly (no padding, no unused bits set, no stray characters)."""
    if len(segment) % 4 == 1:
        return None
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        return None
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != segment:
        return None
    return raw


def is_canonical(token: str) -> bool:
    """True when ``token`` is byte for byte in the form the signer writes."""
    match = _SHAPE.fullmatch(token)
    if match is None:
        return False
    payload = _canonical_b64(match["payload"].removeprefix("."))
    ts = _canonical_b64(match["ts"])
    sig = _canonical_b64(match["sig"])
    if payload is None or not ts or sig is None:
        return False
    # int_to_bytes writes no leading zero byte; the digest has one length.
    return ts[0] != 0 and len(sig) == _SIGNATURE_BYTES


class Signer:
    def __init__(
        self,
        config: settings_mod.TokenSettings,
        *,
        bind: bool = False,
        clock: Clock = time.time,
    ) -> None:
        """``bind``: issue requester-bound links when the requester has an id
        (``binds_requester(settings)``). ``clock`` signs and checks ages (tests pass a
        clock ahead or behind; nothing patches a global)."""
        keys = [k.get_secret_value() for k in config.secret_keys]
        if not keys:
            raise MissingKeyError(
                "no token key configured: set BGWORKER_TOKENS__SECRET_KEYS "
                "(comma-separated, newest last), e.g. from `python -c 'import secrets; "
                "print(secrets.token_urlsafe(32))'`"
            )
        self.bind = bind
        self._config = config
        self.max_age = config.max_age_seconds
        self.skew = config.clock_skew_seconds
        self._clock = clock

        clock_ = clock

        class _ClockedSigner(itsdangerous.TimestampSigner):
            def get_timestamp(self) -> int:
                return int(clock_())

        # Distinct salts: a general token can never be replayed as a bound one or vice versa.
        self._general = itsdangerous.URLSafeTimedSerializer(
            keys, salt=config.salt + GENERAL_SALT_SUFFIX, signer=_ClockedSigner
        )
        self._bound = itsdangerous.URLSafeTimedSerializer(
            keys, salt=config.salt + BOUND_SALT_SUFFIX, signer=_ClockedSigner
        )
        self._my_files = itsdangerous.URLSafeTimedSerializer(
            keys, salt=config.salt + MY_FILES_SALT_SUFFIX, signer=_ClockedSigner
        )
        self.my_files_seconds = config.my_files_seconds
        # A schedule's one-click unsubscribe: a salt of its own, so no download token is
        # ever accepted as one (nor the reverse).
        self._unsubscribe = itsdangerous.URLSafeTimedSerializer(
            keys, salt=config.salt + UNSUBSCRIBE_SALT_SUFFIX, signer=_ClockedSigner
        )

    def for_bundles(self) -> Signer:
        """The signer of bundle links: the same keys, binding and age rules as this one."""
        salted = self._config.model_copy(update={"salt": self._config.salt + BUNDLE_SALT_SUFFIX})
        return Signer(salted, bind=self.bind, clock=self._clock)

    def issue(
        self,
        request_id: uuid.UUID,
        *,
        requester_id: str | None = None,
        generation: int = 0,
        status_only: bool = False,
    ) -> str:
        """A link per the link mode: bound to ``requester_id`` when this signer binds and
        there is one, general otherwise."""
        if self.bind and requester_id:
            return self.bound(
                request_id, requester_id, generation=generation, status_only=status_only
            )
        return self.general(request_id, generation=generation, status_only=status_only)

    def general(
        self, request_id: uuid.UUID, *, generation: int = 0, status_only: bool = False
    ) -> str:
        """A link anyone holding it may use (until its file expires)."""
        return self._general.dumps(_payload(request_id, None, generation, status_only))

    def bound(
        self,
        request_id: uuid.UUID,
        requester_id: str,
        *,
        generation: int = 0,
        status_only: bool = False,
    ) -> str:
        """A link only ``requester_id`` may use."""
        payload = _payload(request_id, requester_id, generation, status_only)
        return BOUND_PREFIX + self._bound.dumps(payload)

    def verify(self, token: str, caller_id: str | None) -> Grant:
        """Check form, signature, age and (for bound tokens) the caller; raise a TokenError
        subclass. Form first: a non-canonical token is refused before any HMAC."""
        if not is_canonical(token):
            raise SuspiciousTokenError("this link is not valid")
        bound = token.startswith(BOUND_PREFIX)
        serializer = self._bound if bound else self._general
        try:
            # No max_age here: itsdangerous would call a token from a clock a second ahead
            # "expired" (age < 0). The age is checked below, with the skew allowance.
            payload, signed_at = serializer.loads(
                token.removeprefix(BOUND_PREFIX) if bound else token, return_timestamp=True
            )
        except itsdangerous.BadData:
            raise SuspiciousTokenError("this link is not valid") from None
        age = self._clock() - signed_at.timestamp()
        if age < -self.skew:
            raise SuspiciousTokenError("this link is not valid")  # "issued" in the future
        if self.max_age is not None and age > self.max_age + self.skew:
            raise SignatureExpiredError("this link has expired")
        grant = _grant(payload, bound)
        if bound and (caller_id is None or caller_id != grant.requester_id):
            raise NotRequesterError("this link belongs to another user")
        return grant

    def my_files(self, email: str, *, lifetime: float | None = None) -> str:
        """A link to the page of every file requested with ``email``, living ``lifetime``
        seconds (default ``TOKENS__MY_FILES_SECONDS``); it names the address, never a
        request, and opens no file by itself."""
        expires_at = int(self._clock() + (lifetime or self.my_files_seconds))
        payload = {"e": normal_email(email), "x": expires_at}
        return MY_FILES_PREFIX + self._my_files.dumps(payload)

    def verify_my_files(self, token: str) -> Requester:
        """As ``verify``, for a my-files token: form, signature (its own salt), issue time,
        ``MAX_AGE_SECONDS`` and the expiry it carries; raises a TokenError subclass."""
        body = token.removeprefix(MY_FILES_PREFIX)
        if body == token or body.startswith(BOUND_PREFIX) or not is_canonical(body):
            raise SuspiciousTokenError("this link is not valid")
        try:
            payload, signed_at = self._my_files.loads(body, return_timestamp=True)
        except itsdangerous.BadData:
            raise SuspiciousTokenError("this link is not valid") from None
        now = self._clock()
        age = now - signed_at.timestamp()
        if age < -self.skew:
            raise SuspiciousTokenError("this link is not valid")
        try:
            email, expires_at = payload["e"], payload["x"]
        except (KeyError, TypeError):
            raise SuspiciousTokenError("this link is not valid") from None
        if not isinstance(email, str) or not email or type(expires_at) is not int:
            raise SuspiciousTokenError("this link is not valid")
        if now > expires_at + self.skew or (
            self.max_age is not None and age > self.max_age + self.skew
        ):
            raise SignatureExpiredError("this link has expired")
        return Requester(email, expires_at)

    def unsubscribe(self, schedule_id: uuid.UUID) -> str:
        """The token of a schedule's unsubscribe link; it never expires (ending an ended
        schedule changes nothing), and only ends that one schedule."""
        return self._unsubscribe.dumps({"sch": str(schedule_id)})

    def verify_unsubscribe(self, token: str) -> uuid.UUID:
        """The schedule an unsubscribe token names; SuspiciousTokenError if it is not one
        we issued, exactly as issued."""
        if not is_canonical(token) or token.startswith(BOUND_PREFIX):
            raise SuspiciousTokenError("this link is not valid")
        try:
            payload = self._unsubscribe.loads(token)
            return uuid.UUID(payload["sch"])
        except (itsdangerous.BadData, KeyError, TypeError, ValueError, AttributeError):
            raise SuspiciousTokenError("this link is not valid") from None


def unsubscribe_url(public_url: str, token: str) -> str:
    return f"{public_url.rstrip('/')}/schedules/unsubscribe?token={token}"


def _payload(
    request_id: uuid.UUID, requester_id: str | None, generation: int, status_only: bool
) -> dict[str, Any]:
    payload: dict[str, Any] = {"r": str(request_id)}
    if requester_id is not None:
        payload["u"] = requester_id
    if generation:
        payload["g"] = generation
    if status_only:
        payload["s"] = 1
    return payload


def _grant(payload: Any, bound: bool) -> Grant:
    try:
        request_id = uuid.UUID(payload["r"])
        requester = payload["u"] if bound else None
        generation = payload.get("g", 0)
        status_only = payload.get("s", 0) == 1
    except (KeyError, TypeError, ValueError, AttributeError):
        raise SuspiciousTokenError("this link is not valid") from None
    if bound and not isinstance(requester, str):
        raise SuspiciousTokenError("this link is not valid")
    if type(generation) is not int or generation < 0:
        raise SuspiciousTokenError("this link is not valid")
    return Grant(request_id, requester, generation, status_only)


def download_url(public_url: str, token: str) -> str:
    return f"{public_url.rstrip('/')}/download/{token}"


def my_files_url(public_url: str, token: str) -> str:
    return f"{public_url.rstrip('/')}/my-files/{token}"


def bundle_url(public_url: str, token: str) -> str:
    return f"{public_url.rstrip('/')}/bundle/{token}"


def status_link(public_url: str, token: str) -> str:
    return f"{public_url.rstrip('/')}/status/{token}"


def status_url(
    settings: settings_mod.Settings,
    request_id: uuid.UUID,
    *,
    requester_id: str | None = None,
    clock: Clock = time.time,
) -> str:
    """The producer's helper: a status-only link for a request it just published (bound to
    ``requester_id`` when links are bound). It works before any worker has seen the request
    ("waiting in the queue") and until ``bgworker revoke``."""
    signer = Signer(settings.tokens, bind=binds_requester(settings), clock=clock)
    token = signer.issue(request_id, requester_id=requester_id, status_only=True)
    return status_link(settings.web.public_url, token)
