"""A real SMTP server that keeps what it receives (aiosmtpd), for the demo, the tests and
``bgworker smtp-sink`` (the emails of a development set-up, printed instead of delivered).

It runs in the caller's event loop, so it can be stopped and started again on the same
port to simulate an SMTP outage.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import itertools
import logging
import re
import socket
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Final, TextIO

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
        if self._sink.on_message is not None:
            self._sink.on_message(message, raw)
        if self._sink.keep:
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
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        *,
        on_message: Callable[[EmailMessage, bytes], None] | None = None,
        keep: bool = True,
    ) -> None:
        self.host = host
        self.port = port or free_port()
        # Called with each message as it arrives (and its bytes as received); ``keep``
        # False: not kept in ``messages`` (a sink that runs for days).
        self.on_message = on_message
        self.keep = keep
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


# -- bgworker smtp-sink ------------------------------------------------------------------

# A link in a text body: up to white space or what ends one in prose.
_LINK_RE: Final = re.compile(r"https?://[^\s<>\"')\]]+")


class ListenError(Exception):
    """The sink cannot listen where it was asked to (the address is taken, or not ours)."""


def links(message: EmailMessage) -> list[str]:
    """The http(s) links of the message's text parts, in order, each once."""
    found: dict[str, None] = {}
    for part in message.walk():
        if part.get_content_type() in ("text/plain", "text/html") and isinstance(
            part, EmailMessage
        ):
            text = part.get_content()
            for link in _LINK_RE.findall(text if isinstance(text, str) else ""):
                found.setdefault(link.rstrip(".,;:"))
    return list(found)


def describe(message: EmailMessage, saved: Path | None = None) -> str:
    """What ``bgworker smtp-sink`` prints for one message: a header line, then the subject,
    the links and where it was saved, one a line."""
    stamp = f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC"
    lines = [
        f"--- {stamp}  to {message.get('To', '?')}  from {message.get('From', '?')}",
        f"subject: {message.get('Subject', '')}",
        *(f"link:    {link}" for link in links(message)),
    ]
    if saved is not None:
        lines.append(f"saved:   {saved}")
    return "\n".join(lines)


async def serve(
    host: str, port: int, out: TextIO, stop: asyncio.Event, *, save_dir: Path | None = None
) -> None:
    """Receive emails on host:port until ``stop`` is set, printing each (and writing it to
    ``save_dir`` as a .eml file). ListenError if it cannot listen."""
    # aiosmtpd logs every SMTP command at INFO: what the sink prints says it better.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    numbers = itertools.count(1)
    if save_dir is not None:
        await asyncio.to_thread(save_dir.mkdir, parents=True, exist_ok=True)

    def received(message: EmailMessage, raw: bytes) -> None:
        number = next(numbers)
        saved = None
        if save_dir is not None:
            saved = save_dir / f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{number}.eml"
            saved.write_bytes(raw)
        print(describe(message, saved), file=out, flush=True)

    sink = SmtpSink(host, port, on_message=received, keep=False)
    try:
        await sink.start()
    except OSError as exc:
        raise ListenError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}): another SMTP server "
            "may run there; pick another with --port (and BGWORKER_SMTP__PORT for the worker)"
        ) from None
    print(
        f"smtp-sink: listening on {host}:{port}; emails are printed here, not delivered "
        "(Ctrl-C stops)",
        file=sys.stderr,
        flush=True,
    )
    try:
        await stop.wait()
    finally:
        await sink.stop()
