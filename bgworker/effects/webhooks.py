"""Webhooks: ``FileReady`` / ``FileFailed`` as signed HTTP POSTs (Standard Webhooks).

The body is the event exactly as the events exchange carries it. Headers, as the
specification says (https://www.standardwebhooks.com, spec/standard-webhooks.md):
``webhook-id`` (the same on every retry of one effect: receivers deduplicate on it),
``webhook-timestamp`` (Unix seconds of this attempt) and ``webhook-signature``: one
``v1,<base64 HMAC-SHA256 of "id.timestamp.body">`` per configured secret, space-separated,
so a receiver can move to a new secret while the old one still signs.

An attempt either returns (a 2xx answer), raises ``addresses.RefusedError`` (never to be
retried: the URL is refused, no secret is set, or the receiver answered 410 Gone, which the
specification reserves for "stop sending") or raises anything else (retried with backoff).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import aiohttp
import yarl
from aiohttp.abc import AbstractResolver, ResolveResult

from bgworker import settings
from bgworker.contract import callback_urls
from bgworker.effects import addresses

ID: Final = "webhook-id"
TIMESTAMP: Final = "webhook-timestamp"
SIGNATURE: Final = "webhook-signature"
USER_AGENT: Final = "bgworker-webhooks"


class DeliveryError(Exception):
    """The receiver did not take the webhook (an answer other than 2xx): retried."""


def sign(keys: Sequence[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: one ``v1,`` signature per key."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        for key in keys
    )


class _Pinned(AbstractResolver):
    """Answers with the addresses already checked, so the connection goes where the check
    looked (DNS is not asked again between check and connect)."""

    def __init__(self, found: list[addresses.Address]) -> None:
        self._found = found

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            {
                "hostname": host,
                "host": str(address),
                "port": port,
                "family": socket.AF_INET6 if address.version == 6 else socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
            for address in self._found
            if family in (0, socket.AF_UNSPEC)
            or family == (socket.AF_INET6 if address.version == 6 else socket.AF_INET)
        ]

    async def close(self) -> None:
        return None


@dataclass(frozen=True, kw_only=True)
class Sender:
    keys: tuple[bytes, ...]
    timeout_seconds: float
    allow_private: bool

    @classmethod
    def from_settings(cls, config: settings.WebhookSettings) -> Sender:
        return cls(
            keys=tuple(settings.webhook_key(secret) for secret in config.secret),
            timeout_seconds=config.timeout_seconds,
            allow_private=config.allow_private,
        )

    async def send(self, url: str, msg_id: str, body: bytes) -> None:
        """POST ``body`` to ``url`` once, within ``timeout_seconds`` from resolving the host
        to the answer's status line. Redirects are not followed (a 3xx is a failed attempt):
        the new location would escape the address check."""
        if not self.keys:
            raise addresses.RefusedError("no webhook secret is set (BGWORKER_WEBHOOKS__SECRET)")
        try:
            # The contract's own parser: the URL that passed validation is the one called.
            # A URL stored before the rule tightened is refused here, not retried.
            target = callback_urls.parse(url)
        except callback_urls.InvalidUrlError as exc:
            raise addresses.RefusedError(f"{url!r} is not a callback URL: it {exc}") from None
        try:
            await self._post(target, msg_id, body)
        except aiohttp.InvalidURL as exc:
            # parse refuses what aiohttp refuses (legacy numeric IPv4 hosts, "127.1"); if
            # they ever disagree, every attempt would end the same way: refused, not retried.
            raise addresses.RefusedError(f"aiohttp will not call this URL: {exc}") from None
        except TimeoutError:
            raise DeliveryError(f"no answer within {self.timeout_seconds:g} s") from None

    async def _post(self, target: yarl.URL, msg_id: str, body: bytes) -> None:
        assert target.raw_host and target.port
        async with asyncio.timeout(self.timeout_seconds):
            found = await addresses.resolve(
                target.raw_host, target.port, allow_private=self.allow_private
            )
            connector = aiohttp.TCPConnector(
                resolver=_Pinned(found), use_dns_cache=False, force_close=True
            )
            async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:
                timestamp = int(time.time())
                headers = {
                    ID: msg_id,
                    TIMESTAMP: str(timestamp),
                    SIGNATURE: sign(self.keys, msg_id, timestamp, body),
                    "Content-Type": "application/json",
                    "User-Agent": USER_AGENT,
                }
                async with session.post(
                    target, data=body, headers=headers, allow_redirects=False
                ) as response:
                    if 200 <= response.status < 300:
                        return
                    if response.status == 410:
                        raise addresses.RefusedError("the receiver answered 410 Gone")
                    extra = " (redirects are not followed)" if 300 <= response.status < 400 else ""
                    raise DeliveryError(f"the receiver answered {response.status}{extra}")
