"""Webhook signing (Standard Webhooks), the verification code of docs/producing.md, the
address policy and the webhook settings, without services."""

from __future__ import annotations

import base64
import ipaddress
import json
import secrets
import socket
import time
from typing import Any

import pytest
import standardwebhooks
from multidict import CIMultiDict
from pydantic import SecretStr, ValidationError

from bgworker import settings as settings_mod
from bgworker.effects import addresses, webhooks
from tests.webhook_verify import documented_verify

verify = documented_verify()
KEY = secrets.token_bytes(32)
SECRET = "whsec_" + base64.b64encode(KEY).decode()
OLD_KEY = secrets.token_bytes(32)
OLD_SECRET = "whsec_" + base64.b64encode(OLD_KEY).decode()
BODY = json.dumps({"id": "0a2899be-dc23-450e-b95e-01b72f0b4be6", "size": 3}).encode()


def signed(body: bytes = BODY, keys: tuple[bytes, ...] = (KEY,), **over: str) -> CIMultiDict[str]:
    now = int(time.time())
    headers = {
        "webhook-id": "0a2899be-dc23-450e-b95e-01b72f0b4be6.file.ready",
        "webhook-timestamp": str(now),
        "webhook-signature": webhooks.sign(
            keys, "0a2899be-dc23-450e-b95e-01b72f0b4be6.file.ready", now, body
        ),
    }
    headers.update(over)
    return CIMultiDict(headers)


def test_a_signed_webhook_passes_the_reference_verifier_and_the_documented_code() -> None:
    headers = signed()
    assert standardwebhooks.Webhook(SECRET).verify(BODY, dict(headers)) == json.loads(BODY)
    assert verify(SECRET, headers, BODY) == json.loads(BODY)


def test_every_secret_signs_so_a_receiver_can_rotate() -> None:
    headers = signed(keys=(OLD_KEY, KEY))
    assert len(headers["webhook-signature"].split()) == 2
    for secret in (OLD_SECRET, SECRET):
        assert verify(secret, headers, BODY) == json.loads(BODY)
        standardwebhooks.Webhook(secret).verify(BODY, dict(headers))
    other = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    with pytest.raises(ValueError):
        verify(other, headers, BODY)


def _flip(text: str) -> str:
    # Change a character in the middle of the base64: the last one before the padding
    # carries unused low bits, so changing only those would leave the decoded MAC the
    # same (standardwebhooks decodes and would rightly accept it).
    middle = len(text) // 2
    return text[:middle] + ("A" if text[middle] != "A" else "B") + text[middle + 1 :]


@pytest.mark.parametrize(
    ("body", "change"),
    [
        (BODY.replace(b'"size": 3', b'"size": 4'), {}),  # tampered body
        (BODY + b" ", {}),  # one byte more
        (BODY, {"webhook-signature": "SIG"}),  # tampered signature (filled in below)
        (BODY, {"webhook-id": "another.file.ready"}),  # replayed under another id
        (BODY, {"webhook-timestamp": str(int(time.time()) - 10)}),  # re-dated
        (BODY, {"webhook-timestamp": str(int(time.time()) - 3600)}),  # too old
        (BODY, {"webhook-signature": "v2,abc"}),  # unknown version only
        (BODY, {"webhook-signature": ""}),
        (BODY, {"webhook-id": ""}),
    ],
)
def test_tampering_is_detected(body: bytes, change: dict[str, str]) -> None:
    headers = signed()
    if change.get("webhook-signature") == "SIG":
        change = {"webhook-signature": _flip(headers["webhook-signature"])}
    headers.update(change)
    with pytest.raises(ValueError):
        verify(SECRET, headers, body)
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(SECRET).verify(body, dict(headers))


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("100.64.0.1", "not globally reachable"),  # carrier-grade NAT
        ("192.0.2.1", "private"),  # documentation
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("ff02::1", "multicast"),
        ("2001:db8::1", "private"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:169.254.169.254", "link-local"),
        ("2002:7f00:1::1", "6to4 of a loopback"),  # 6to4 carrying 127.0.0.1
        ("2002:a9fe:a9fe::", "6to4 of a link-local"),  # ... 169.254.169.254
        ("2002:a00:1::1", "6to4 of a private"),  # ... 10.0.0.1
        ("fec0::1", "site-local"),  # deprecated, still routed in places
    ],
)
def test_non_public_addresses_are_refused(address: str, why: str) -> None:
    assert addresses.refusal(ipaddress.ip_address(address)) == why


@pytest.mark.parametrize(
    "address", ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"]
)
def test_public_addresses_pass(address: str) -> None:
    assert addresses.refusal(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]", "127.1", "2130706433"])
async def test_names_and_literals_that_reach_this_host_are_refused(host: str) -> None:
    with pytest.raises(addresses.RefusedError, match="loopback"):
        await addresses.resolve(host, 80, allow_private=False)


async def test_allow_private_lets_them_through() -> None:
    found = await addresses.resolve("127.0.0.1", 80, allow_private=True)
    assert found == [ipaddress.ip_address("127.0.0.1")]


async def test_sending_without_a_secret_is_refused_before_any_connection() -> None:
    sender = webhooks.Sender(keys=(), timeout_seconds=1, allow_private=True)
    with pytest.raises(addresses.RefusedError, match="no webhook secret"):
        await sender.send("http://127.0.0.1:9/", "x", b"{}")


@pytest.mark.parametrize("host", ["134744072", "8.8.2056", "010.010.010.010", "[127.0.0.1]"])
async def test_hosts_the_contract_refuses_are_refused_not_retried(host: str) -> None:
    # getaddrinfo maps the legacy numeric forms onto a public address (8.8.8.8) but aiohttp
    # will not connect to them, and yarl cannot read the last: every attempt would fail the
    # same way. A URL stored before the contract refused them is refused at once, never sent.
    sender = webhooks.Sender(keys=(b"k" * 32,), timeout_seconds=5, allow_private=False)
    with pytest.raises(addresses.RefusedError, match="is not a callback URL"):
        await sender.send(f"http://{host}/", "x", b"{}")


def _webhook_settings(**values: Any) -> settings_mod.WebhookSettings:
    return settings_mod.WebhookSettings.model_validate(values)


def test_settings_read_secrets_and_url_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BGWORKER_WEBHOOKS__URL", "https://hooks.example.com/bgworker")
    monkeypatch.setenv("BGWORKER_WEBHOOKS__SECRET", f"{SECRET},{OLD_SECRET}")
    monkeypatch.setenv("BGWORKER_WEBHOOKS__ALLOW_PRIVATE", "true")
    config = settings_mod.Settings().webhooks
    assert config.url == "https://hooks.example.com/bgworker"
    assert webhooks.Sender.from_settings(config).keys == (KEY, OLD_KEY)
    assert config.allow_private is True


@pytest.mark.parametrize(
    "secret",
    [
        "not-whsec",
        "whsec_!!!",
        "whsec_" + base64.b64encode(b"short").decode(),
        base64.b64encode(KEY).decode(),  # the prefix is part of the format
    ],
    # Stable ids: KEY is random, and pytest-xdist needs every worker to collect the same ids.
    ids=["no-prefix", "not-base64", "too-short", "bare-key"],
)
def test_malformed_secrets_are_refused_at_start(secret: str) -> None:
    with pytest.raises(ValidationError, match="webhook secret"):
        _webhook_settings(secret=[SecretStr(secret)])


@pytest.mark.parametrize(
    "url", ["ftp://example.com/", "https://user:pw@example.com/", "https://example.com/#x"]
)
def test_a_deployment_url_obeys_the_callback_url_rule(url: str) -> None:
    with pytest.raises(ValidationError, match="must be an absolute"):
        _webhook_settings(url=url)


async def test_the_pinned_resolver_answers_only_the_checked_addresses() -> None:
    # Whatever name aiohttp asks about, it gets the addresses the policy checked, so DNS
    # cannot answer differently between the check and the connection (rebinding).
    checked = [ipaddress.ip_address("93.184.215.14"), ipaddress.ip_address("2606:2800::1")]
    pinned = webhooks._Pinned(checked)
    found = await pinned.resolve("example.com", 443, socket.AF_UNSPEC)
    assert [(r["host"], r["port"], r["family"]) for r in found] == [
        ("93.184.215.14", 443, socket.AF_INET),
        ("2606:2800::1", 443, socket.AF_INET6),
    ]
    only_v4 = await pinned.resolve("example.com", 443, socket.AF_INET)
    assert [r["host"] for r in only_v4] == ["93.184.215.14"]
