"""What the scenarios' requests cause, received and counted: emails (an aiosmtpd sink,
counted by Message-ID) and webhooks (an aiohttp receiver, counted by ``webhook-id``).

A copy is a second arrival of the same Message-ID or ``webhook-id``: the same effect
performed twice. Both run on the test's event loop and bind the address they are given
(loopback, or the test's own address on the hosts' bridge).
"""

from __future__ import annotations

import json
import re
import uuid
from collections import Counter
from email.message import EmailMessage
from typing import Final

from aiohttp import web

from bgworker.cli.smtp_sink import SmtpSink, free_port
from bgworker.effects import webhooks

# The request id an email is about: in its Message-ID, <request id>.<template>@bgworker.
_MESSAGE_ID: Final = re.compile(r"<([0-9a-f-]{36})\.(\w+)@")


class Mailbox:
    """An SMTP sink that keeps no message, only counts: per Message-ID, and which
    Message-IDs each request got."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.sink = SmtpSink(host, free_port(), on_message=self._on_message, keep=False)
        self.by_message_id: Counter[str] = Counter()
        self.by_request: dict[uuid.UUID, set[str]] = {}
        self.unparsed: list[str] = []

    @property
    def host(self) -> str:
        return self.sink.host

    @property
    def port(self) -> int:
        return self.sink.port

    def _on_message(self, message: EmailMessage, raw: bytes) -> None:
        message_id = str(message["Message-ID"])
        self.by_message_id[message_id] += 1
        match = _MESSAGE_ID.search(message_id)
        if match is None:
            self.unparsed.append(message_id)
            return
        self.by_request.setdefault(uuid.UUID(match[1]), set()).add(message_id)

    @property
    def received(self) -> int:
        return sum(self.by_message_id.values())

    @property
    def copies(self) -> int:
        """Arrivals beyond the first of each Message-ID."""
        return self.received - len(self.by_message_id)

    async def __aenter__(self) -> Mailbox:
        await self.sink.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.sink.stop()


class WebhookReceiver:
    """Answers 200 to every POST and counts it by ``webhook-id``; keeps each request's
    ``FileReady`` body (its download link and sha256)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = free_port()
        self.by_webhook_id: Counter[str] = Counter()
        self.ready: dict[uuid.UUID, dict[str, object]] = {}
        self.failed: set[uuid.UUID] = set()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/hook"

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.by_webhook_id[request.headers.get(webhooks.ID, "")] += 1
        event = json.loads(body)
        request_id = uuid.UUID(event["id"])
        if "download_url" in event:
            self.ready[request_id] = event
        else:
            self.failed.add(request_id)
        return web.Response(text="ok")

    @property
    def received(self) -> int:
        return sum(self.by_webhook_id.values())

    @property
    def copies(self) -> int:
        return self.received - len(self.by_webhook_id)

    async def __aenter__(self) -> WebhookReceiver:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
