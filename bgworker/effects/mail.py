"""Email to requesters over aiosmtplib, rendered from the templates in ``templates/email``
in the requester's language (``languages``), dates in their time zone."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from datetime import datetime
from email import headerregistry
from email import policy as email_policy
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from typing import Any, Final, Literal

import aiosmtplib
import aiosmtplib.typing

from bgworker import languages
from bgworker import settings as settings_mod
from bgworker.observe import logs

log = logging.getLogger(__name__)

# Seconds to wait for the answer to QUIT when closing a connection.
QUIT_TIMEOUT: Final = 5.0


class NotifyError(Exception):
    pass


class _HeaderClasses(headerregistry.HeaderRegistry):
    """The stdlib's registry, with each header class made once: on Python 3.11 it makes a
    new class (``type(...)``) for every header set, which was half of an email's rendering
    time (1.5 ms -> 0.8 ms per email measured; the bytes sent are the same)."""

    def __init__(self) -> None:
        super().__init__()
        self._made: dict[str, type[headerregistry.BaseHeader]] = {}

    def __getitem__(self, name: str) -> type[headerregistry.BaseHeader]:
        key = name.lower()
        made = self._made.get(key)
        if made is None:
            made = self._made[key] = super().__getitem__(name)
        return made

    def map_to_type(self, name: str, cls: type[headerregistry.BaseHeader]) -> None:
        super().map_to_type(name, cls)
        self._made.pop(name.lower(), None)


# email.policy.default with the cached header classes.
POLICY = email_policy.default.clone(header_factory=_HeaderClasses())


def render(
    template: str,
    to: str,
    sender: str,
    context: dict[str, Any],
    *,
    template_dir: Path | None = None,
) -> EmailMessage:
    """``template`` is ``ready`` or ``failed``; a text part plus an HTML alternative, in the
    context's ``language`` (English when no catalog serves it). ``context`` never carries
    the exception text of a failure: the failed email says what the requester can do."""
    locale = languages.locale_for(context.get("language"))
    env = languages.environment(template_dir, locale)
    # No footer link to the requester's page unless the dispatcher signed one.
    ctx = {
        "description": "",
        "my_files_url": None,
        "unsubscribe_url": "",
        **context,
        "language": locale.replace("_", "-"),
    }
    if ctx.get("size") is not None:
        ctx["size_human"] = languages.format_size(int(ctx["size"]), locale)
    if ctx.get("expires_at"):
        moment = datetime.fromisoformat(ctx["expires_at"])
        ctx["expires_at_local"] = languages.format_datetime(moment, ctx.get("timezone"), locale)
    ctx.pop("error", None)  # operators keep it (row, attempts, dead letter); never mailed
    subject = env.get_template(f"email/{template}.subject.j2").render(ctx).strip()
    message = EmailMessage(policy=POLICY)
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=False)
    # Deterministic: if a retry re-sends after a crash, mail systems can collapse the copies.
    message["Message-ID"] = f"<{ctx['request_id']}.{template}@bgworker>"
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(env.get_template(f"email/{template}.txt.j2").render(ctx))
    message.add_alternative(
        env.get_template(f"email/{template}.html.j2").render(ctx), subtype="html"
    )
    return message


class _Connection(aiosmtplib.SMTP):
    """A pooled client that knows whether the current message reached DATA: before it, the
    server cannot have accepted the message, so a failure may be retried elsewhere."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.data_started = False
        self.sent = 0  # messages accepted over this connection
        self.idle_since = 0.0  # loop time it went back to the pool

    async def data(
        self,
        message: str | bytes,
        /,
        *,
        timeout: float | Literal[aiosmtplib.typing.Default.token] | None = (
            aiosmtplib.typing.Default.token
        ),
    ) -> aiosmtplib.SMTPResponse:
        self.data_started = True
        return await super().data(message, timeout=timeout)


def _before_data(client: _Connection, exc: BaseException) -> bool:
    """A failure that shows a stale connection (dropped by the server while idle, or a 421
    "closing") before DATA: the message cannot have been accepted, a retry is safe. A
    refused recipient is not about the connection: a fresh one would be refused too."""
    if client.data_started:
        return False
    if isinstance(exc, aiosmtplib.SMTPSenderRefused):
        return True
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return exc.code == 421
    return isinstance(exc, OSError)  # includes SMTPServerDisconnected and SMTPTimeoutError


class Mailer:
    """Sends over a pool of connected clients, each used by one send at a time: a new
    connection is made only when none is idle, so there are at most as many as sends run at
    once. One idle ``idle_seconds`` or used for ``max_messages_per_connection`` is closed
    (QUIT), and ``close`` closes the rest; ``idle_seconds`` 0 makes one connection per
    email. Reusing saves the connect, greeting, EHLO, STARTTLS and AUTH of every email."""

    def __init__(
        self, config: settings_mod.SmtpSettings, *, template_dir: Path | None = None
    ) -> None:
        self.config = config
        self.template_dir = template_dir
        # aiosmtplib otherwise calls socket.getfqdn() for every EHLO, a blocking lookup that
        # cost ~1.8 ms of event-loop time per email in the benchmark profile.
        self._local_hostname = socket.getfqdn()
        # Oldest first: sends take the newest, so the pool shrinks to what is needed.
        self._idle: list[_Connection] = []
        self._reaper: asyncio.Task[None] | None = None
        self._closed = False
        self.connections_made = 0

    async def send(
        self, message: EmailMessage, on_accepted: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Send; ``on_accepted`` runs as soon as the server has accepted the message, before
        the connection is reused or closed, to keep the window in which a crash would make a
        retry re-send it small. A reused connection that fails before DATA is replaced by a
        fresh one, once; a failure during or after DATA raises (the server may have accepted
        the message: the outbox retries later rather than send a copy now)."""
        c = self.config
        try:
            client = self._take_idle()
            if client is not None:
                try:
                    await self._transmit(client, message)
                except Exception as exc:
                    if not _before_data(client, exc):
                        raise
                    log.info(
                        "SMTP connection went stale (%s); sending on a new one", logs.describe(exc)
                    )
                    client = None
            if client is None:
                client = await self._connect()
                await self._transmit(client, message)
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise NotifyError(f"SMTP {c.host}:{c.port}: {exc}") from exc
        try:
            if on_accepted is not None:
                await on_accepted()
        finally:
            await self._release(client)

    async def close(self) -> None:
        """QUIT the idle connections (the worker's stop); later sends still work, each on a
        connection of its own."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        idle, self._idle = self._idle, []
        await asyncio.gather(*(self._quit(client) for client in idle))

    def _take_idle(self) -> _Connection | None:
        while self._idle:
            client = self._idle.pop()
            if client.is_connected:
                return client
            client.close()  # the server closed it while idle: we noticed, nothing to retry
        return None

    async def _connect(self) -> _Connection:
        c = self.config
        client = _Connection(
            hostname=c.host,
            port=c.port,
            username=c.username,
            password=c.password.get_secret_value() if c.password else None,
            use_tls=c.use_tls,
            start_tls=c.start_tls,
            timeout=c.timeout_seconds,
            local_hostname=self._local_hostname,
        )
        await client.connect()
        self.connections_made += 1
        return client

    async def _transmit(self, client: _Connection, message: EmailMessage) -> None:
        client.data_started = False
        # Never back in the pool after an error: its state is unknown.
        try:
            await client.send_message(message)
        except Exception:
            await self._quit(client)
            raise
        except BaseException:  # cancelled: no time for a QUIT
            client.close()
            raise
        client.sent += 1

    async def _release(self, client: _Connection) -> None:
        c = self.config
        if (
            self._closed
            or c.idle_seconds <= 0
            or client.sent >= c.max_messages_per_connection
            or not client.is_connected
        ):
            await self._quit(client)
            return
        client.idle_since = asyncio.get_running_loop().time()
        self._idle.append(client)
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.create_task(self._close_idle(), name="smtp-idle-close")

    async def _close_idle(self) -> None:
        """QUIT connections idle ``idle_seconds``; ends when none is left idle."""
        loop = asyncio.get_running_loop()
        while self._idle:
            oldest = self._idle[0]
            wait = oldest.idle_since + self.config.idle_seconds - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            self._idle.pop(0)
            await self._quit(oldest)

    async def _quit(self, client: _Connection) -> None:
        # A short timeout: a server that does not answer QUIT must not hold up a stop.
        try:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                if client.is_connected:
                    await client.quit(timeout=min(self.config.timeout_seconds, QUIT_TIMEOUT))
        finally:
            client.close()  # also when cancelled mid-QUIT

    def render(self, template: str, to: str, context: dict[str, Any]) -> EmailMessage:
        return render(template, to, self.config.sender, context, template_dir=self.template_dir)
