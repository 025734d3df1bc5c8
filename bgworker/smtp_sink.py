"""A real SMTP server that keeps what it receives (aiosmtpd), for the demo and the tests.

It runs in the caller's event loop, so it can be stopped and started again on the same
port to simulate an SMTP outage.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
from email.message import EmailMessage
from typing import Any, Final

from aiosmtpd.smtp import SMTP, Envelope, Session


class _Collect:
    def __init__(self, sink: SmtpSink) -> None:
        self._sink = sink

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        fault = self._sink.faults.pop("MAIL", None)
        if fault is not None:
            return fault
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content
        assert isinstance(raw, bytes)
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self._sink.messages.append(message)
        self._sink.changed.set()
        fault = self._sink.faults.pop("DATA", None)
        if fault == DROP:
            # Kept, but the client never hears so: the case a sender must not repeat at once.
            assert server.transport is not None
            server.transport.close()
        elif fault is not None:
            return fault
        return "250 Message accepted for delivery"

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self._sink.quits += 1
        return "221 Bye"


DROP: Final = "drop"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class SmtpSink:
    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.port = port or free_port()
        self.messages: list[EmailMessage] = []
        self.changed = asyncio.Event()
        self._server: asyncio.Server | None = None
        # Counted for the tests of connection reuse (notify.Mailer).
        self.connections = 0
        self.quits = 0
        self._sessions: list[SMTP] = []
        # One-shot replies: "MAIL" -> a reply to the next MAIL FROM instead of 250; "DATA"
        # -> a reply after the next message is kept, or DROP to close without replying.
        self.faults: dict[str, str] = {}

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        handler = _Collect(self)

        def session() -> SMTP:
            self.connections += 1
            made = SMTP(handler, hostname="bgworker-sink", enable_SMTPUTF8=True)
            # Closed ones are let go (a long demo or test run makes many); one accepted but
            # not yet connected has no session yet and is kept.
            self._sessions = [m for m in self._sessions if m.session is None or m.transport]
            self._sessions.append(made)
            return made

        self._server = await loop.create_server(
            session,
            self.host,
            self.port,
            reuse_address=True,
        )

    async def stop(self) -> None:
        """An outage: the open connections close too (``Server.close`` leaves them)."""
        self.drop_connections()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def drop_connections(self) -> int:
        """Close every open client connection from the server's side, as a server does with
        idle ones; how many were open."""
        dropped = self._open()
        for made in dropped:
            assert made.transport is not None
            made.transport.close()
        return len(dropped)

    def open_connections(self) -> int:
        return len(self._open())

    def _open(self) -> list[SMTP]:
        return [m for m in self._sessions if m.transport and not m.transport.is_closing()]

    async def __aenter__(self) -> SmtpSink:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    async def wait_for(self, count: int, timeout: float) -> list[EmailMessage]:
        """Wait until at least ``count`` messages arrived; TimeoutError otherwise."""
        async with asyncio.timeout(timeout):
            while len(self.messages) < count:
                self.changed.clear()
                await self.changed.wait()
        return self.messages


def text_body(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    content: str = part.get_content()
    return content
