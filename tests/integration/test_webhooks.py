"""Webhooks end to end: a real worker POSTs to a real aiohttp receiver on a loopback port
(so the tests set ALLOW_PRIVATE, except the one that checks the refusal)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import standardwebhooks
from aiohttp import web
from multidict import CIMultiDict
from pydantic import SecretStr

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.cli.smtp_sink import SmtpSink
from bgworker.effects import addresses, webhooks
from tests.helpers import EventLog, Publish, StartWorker, list_outbox, wait_until
from tests.integration.console import PASSWORD, basic, client
from tests.integration.letters import Cli
from tests.webhook_verify import documented_verify

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
verify = documented_verify()


@dataclass
class Receiver:
    """A webhook receiver: answers each POST with the next of ``answers`` (the last one
    repeats; ``None`` hangs) and records what it got."""

    answers: list[int | None]
    url: str = ""
    calls: list[tuple[CIMultiDict[str], bytes]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.calls.append((CIMultiDict(request.headers), await request.read()))
        answer = self.answers[min(len(self.calls), len(self.answers)) - 1]
        if answer is None:
            await asyncio.sleep(3600)
        # A redirect points back here: following it would show as a second call.
        location = {"Location": self.url} if 300 <= (answer or 0) < 400 else None
        return web.Response(status=answer or 204, headers=location)


StartReceiver = Callable[..., Awaitable[Receiver]]


@pytest.fixture
async def start_receiver() -> AsyncIterator[StartReceiver]:
    runners: list[web.AppRunner] = []

    async def _start(*answers: int | None) -> Receiver:
        receiver = Receiver(list(answers) or [204])
        app = web.Application()
        app.router.add_post("/hook", receiver.handle)
        runner = web.AppRunner(app, handler_cancellation=True)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        receiver.url = f"http://{host}:{port}/hook"
        return receiver

    yield _start
    for runner in runners:
        with contextlib.suppress(Exception):
            await runner.cleanup()


@pytest.fixture(autouse=True)
def _webhooks(settings: settings_mod.Settings) -> None:
    settings.webhooks = settings_mod.WebhookSettings(
        secret=[SecretStr(SECRET)], allow_private=True, max_attempts=3, timeout_seconds=1
    )


async def _effects(db: store.Store, request_id: Any) -> dict[str, dict[str, Any]]:
    return {o["kind"]: o for o in await list_outbox(db, request_id)}


async def _settled(db: store.Store, request_id: Any, kind: str, status: str) -> dict[str, Any]:
    async def there() -> bool:
        return (await _effects(db, request_id)).get(kind, {}).get("status") == status

    await wait_until(there, timeout=30)
    return (await _effects(db, request_id))[kind]


async def test_file_ready_arrives_signed_and_verifiable(
    db: store.Store,
    publish: Publish,
    start_worker: StartWorker,
    start_receiver: StartReceiver,
    event_log: EventLog,
) -> None:
    receiver = await start_receiver(200)
    await start_worker()
    event = await publish("blob", {"size": 100}, callback_url=receiver.url)
    await _settled(db, event.id, "webhook_ready", "done")

    [(headers, body)] = receiver.calls
    # The documented code and the reference implementation both accept it.
    got = verify(SECRET, headers, body)
    assert standardwebhooks.Webhook(SECRET).verify(body, dict(headers)) == got
    assert headers["webhook-id"] == f"{event.id}.file.ready"
    assert headers["content-type"] == "application/json"
    # The same body as the FileReady on the events exchange.
    await wait_until(lambda: event_log, timeout=10)
    [(key, on_rabbit)] = event_log
    assert key == "file.ready"
    assert got.pop("download_url").startswith("http://127.0.0.1:1/download/")
    on_rabbit.pop("download_url")
    assert got == on_rabbit
    assert got["id"] == str(event.id) and got["size"] == 100
    # Tampering is detected by the same code.
    with pytest.raises(ValueError):
        verify(SECRET, headers, body.replace(b'"size":100', b'"size":101'))


async def test_file_failed_arrives_signed(
    db: store.Store, publish: Publish, start_worker: StartWorker, start_receiver: StartReceiver
) -> None:
    receiver = await start_receiver(200)
    await start_worker()
    event = await publish("permanent", callback_url=receiver.url)
    await _settled(db, event.id, "webhook_failed", "done")
    [(headers, body)] = receiver.calls
    got = verify(SECRET, headers, body)
    assert got["id"] == str(event.id) and got["reason"] == "permanent_error"
    assert headers["webhook-id"] == f"{event.id}.file.failed"


async def test_a_failing_receiver_is_retried_then_given_up_and_blocks_nothing(
    db: store.Store,
    publish: Publish,
    start_worker: StartWorker,
    start_receiver: StartReceiver,
    smtp_sink: SmtpSink,
    event_log: EventLog,
    cli: Cli,
) -> None:
    receiver = await start_receiver(500)
    await start_worker()
    event = await publish(
        "blob", {"size": 10}, callback_url=receiver.url, requester={"email": "ann@example.com"}
    )
    # While the receiver answers 500, the email and the FileReady event of the same request
    # go out, and another request's effects too.
    other = await publish("blob", {"size": 10}, requester={"email": "bob@example.com"})
    await wait_until(lambda: len(smtp_sink.messages) == 2, timeout=30)
    await wait_until(lambda: len(event_log) == 2, timeout=30)
    assert {m["To"] for m in smtp_sink.messages} == {"ann@example.com", "bob@example.com"}

    row = await _settled(db, event.id, "webhook_ready", "given_up")
    assert row["attempts"] == 3
    assert len(receiver.calls) == 3  # then never again
    assert {h["webhook-id"] for h, _ in receiver.calls} == {f"{event.id}.file.ready"}
    assert row["last_error"] == (
        "given up after 3 attempts: DeliveryError: the receiver answered 500"
    )
    effects = await _effects(db, event.id)
    assert effects["email_ready"]["status"] == effects["event_ready"]["status"] == "done"
    assert "webhook_ready" not in await _effects(db, other.id)

    # Visible to an operator: `bgworker status` lists the effect with its reason.
    code, out, err = await cli("status", str(event.id), "--json")
    assert code == 0, err
    shown = {e["kind"]: e for e in json.loads(out)["effects"]}
    assert shown["webhook_ready"]["status"] == "given_up"
    assert "answered 500" in shown["webhook_ready"]["last_error"]


async def test_a_hanging_receiver_times_out_and_is_retried(
    db: store.Store,
    publish: Publish,
    start_worker: StartWorker,
    start_receiver: StartReceiver,
    smtp_sink: SmtpSink,
) -> None:
    receiver = await start_receiver(None, 200)  # hangs once, then takes it
    await start_worker()
    event = await publish(
        "blob", {"size": 10}, callback_url=receiver.url, requester={"email": "ann@example.com"}
    )
    await wait_until(lambda: len(smtp_sink.messages) == 1, timeout=30)
    row = await _settled(db, event.id, "webhook_ready", "done")
    assert row["attempts"] == 2 and len(receiver.calls) == 2
    assert row["last_error"] is None  # cleared once done; the retry log says why
    # The same webhook-id on the retry, a fresh signature that verifies.
    assert receiver.calls[0][0]["webhook-id"] == receiver.calls[1][0]["webhook-id"]
    verify(SECRET, *receiver.calls[1])


async def test_gone_gives_up_at_once(
    db: store.Store, publish: Publish, start_worker: StartWorker, start_receiver: StartReceiver
) -> None:
    receiver = await start_receiver(410)
    await start_worker()
    event = await publish("blob", {"size": 10}, callback_url=receiver.url)
    row = await _settled(db, event.id, "webhook_ready", "given_up")
    assert row["attempts"] == 1 and len(receiver.calls) == 1
    assert "410 Gone" in row["last_error"]


async def test_a_loopback_callback_is_refused_without_allow_private(
    db: store.Store,
    publish: Publish,
    start_worker: StartWorker,
    start_receiver: StartReceiver,
    settings: settings_mod.Settings,
    console: str,
) -> None:
    settings.webhooks.allow_private = False
    receiver = await start_receiver(200)
    await start_worker()
    event = await publish("blob", {"size": 10}, callback_url=receiver.url)
    row = await _settled(db, event.id, "webhook_ready", "given_up")
    assert row["attempts"] == 1  # a refusal is permanent: never retried
    assert "resolves to 127.0.0.1, a loopback address" in row["last_error"]
    # The other effects go on (the refusal and the event are performed side by side).
    await _settled(db, event.id, "event_ready", "done")
    assert receiver.calls == []  # nothing was ever sent
    # The console's request page (its JSON form) shows it given up, with the reason.
    async with client() as http:
        auth = basic("admin", PASSWORD)
        async with http.get(f"{console}/admin/api/requests/{event.id}", headers=auth) as r:
            shown = {e["kind"]: e for e in (await r.json())["effects"]}
    assert shown["webhook_ready"]["status"] == "given_up"
    assert "loopback" in shown["webhook_ready"]["last_error"]


async def test_the_deployment_url_unless_the_request_names_its_own(
    db: store.Store,
    publish: Publish,
    start_worker: StartWorker,
    start_receiver: StartReceiver,
    settings: settings_mod.Settings,
) -> None:
    deployment = await start_receiver(200)
    own = await start_receiver(200)
    settings.webhooks.url = deployment.url
    await start_worker()
    plain = await publish("blob", {"size": 10})
    named = await publish("blob", {"size": 10}, callback_url=own.url)
    await _settled(db, plain.id, "webhook_ready", "done")
    await _settled(db, named.id, "webhook_ready", "done")
    assert [verify(SECRET, *c)["id"] for c in deployment.calls] == [str(plain.id)]
    assert [verify(SECRET, *c)["id"] for c in own.calls] == [str(named.id)]


async def test_a_host_name_is_resolved_once_and_connected_to_as_checked(
    start_receiver: StartReceiver,
) -> None:
    # A name (not an IP literal) goes through the pinned resolver: the connection reaches
    # the receiver at the address the check saw.
    receiver = await start_receiver(200)
    url = receiver.url.replace("127.0.0.1", "localhost")
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    sender = webhooks.Sender(keys=(key,), timeout_seconds=5, allow_private=True)
    await sender.send(url, "an-id", b"{}")
    [(headers, body)] = receiver.calls
    assert verify(SECRET, headers, body) == {}
    refusing = webhooks.Sender(keys=(key,), timeout_seconds=5, allow_private=False)
    with pytest.raises(addresses.RefusedError, match="localhost resolves to"):
        await refusing.send(url, "an-id", b"{}")
    assert len(receiver.calls) == 1


async def test_a_redirect_is_not_followed(start_receiver: StartReceiver) -> None:
    receiver = await start_receiver(307)
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    sender = webhooks.Sender(keys=(key,), timeout_seconds=5, allow_private=True)
    with pytest.raises(webhooks.DeliveryError, match=r"307 \(redirects are not followed\)"):
        await sender.send(receiver.url, "an-id", b"{}")
    assert len(receiver.calls) == 1
