"""Signed, expiring download tokens (itsdangerous), optionally bound to the requester.

``max_age`` limits the link; the file's own ``expires_at`` is checked separately by the
server. Keys rotate: the newest key signs, every listed key verifies.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Final

import itsdangerous

from bgworker import settings as settings_mod

GENERAL_SALT_SUFFIX: Final = ".general"
BOUND_SALT_SUFFIX: Final = ".requester"


class TokenError(Exception):
    """Base: the token does not grant access."""


class SuspiciousTokenError(TokenError):
    """Tampered, malformed, or signed with a key we do not hold (HTTP 400)."""


class SignatureExpiredError(TokenError):
    """Valid signature, but older than max_age (HTTP 410)."""


class NotRequesterError(TokenError):
    """A requester-bound token presented by someone else, or by nobody (HTTP 403)."""


class MissingKeyError(RuntimeError):
    pass


@dataclass(frozen=True)
class Grant:
    request_id: uuid.UUID
    requester_id: str | None  # None for general links


class Signer:
    def __init__(self, config: settings_mod.TokenSettings) -> None:
        keys = [k.get_secret_value() for k in config.secret_keys]
        if not keys:
            raise MissingKeyError(
                "no token key configured: set BGWORKER_TOKENS__SECRET_KEYS "
                "(comma-separated, newest last), e.g. from `python -c 'import secrets; "
                "print(secrets.token_urlsafe(32))'`"
            )
        self.max_age = config.max_age_seconds
        # Distinct salts: a general token can never be replayed as a bound one or vice versa.
        self._general = itsdangerous.URLSafeTimedSerializer(
            keys, salt=config.salt + GENERAL_SALT_SUFFIX
        )
        self._bound = itsdangerous.URLSafeTimedSerializer(
            keys, salt=config.salt + BOUND_SALT_SUFFIX
        )

    def general(self, request_id: uuid.UUID) -> str:
        """A link anyone holding it may use (until max_age and the file's expiry)."""
        return self._general.dumps({"r": str(request_id)})

    def bound(self, request_id: uuid.UUID, requester_id: str) -> str:
        """A link only ``requester_id`` may use."""
        return "u." + self._bound.dumps({"r": str(request_id), "u": requester_id})

    def for_request(self, request_id: uuid.UUID, requester_id: str | None) -> str:
        return self.bound(request_id, requester_id) if requester_id else self.general(request_id)

    def verify(self, token: str, caller_id: str | None) -> Grant:
        """Check signature, age and (for bound tokens) the caller; raise a TokenError subclass."""
        bound = token.startswith("u.")
        serializer = self._bound if bound else self._general
        try:
            payload = serializer.loads(token[2:] if bound else token, max_age=self.max_age)
        except itsdangerous.SignatureExpired:
            raise SignatureExpiredError("this link has expired") from None
        except itsdangerous.BadData:
            raise SuspiciousTokenError("this link is not valid") from None
        try:
            request_id = uuid.UUID(payload["r"])
            requester = payload.get("u") if bound else None
        except (KeyError, TypeError, ValueError, AttributeError):
            raise SuspiciousTokenError("this link is not valid") from None
        if bound and (caller_id is None or caller_id != requester):
            raise NotRequesterError("this link belongs to another user")
        return Grant(request_id, requester)
