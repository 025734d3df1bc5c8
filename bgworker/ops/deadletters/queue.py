"""The dead-letter queue itself: a scan that reads it without disturbing it.

A scan opens its own channel, takes the queue depth N, and ``basic.get``s N messages
*without acknowledging them*, one at a time; each is summarised (body parsed once, then
dropped) and handed to the caller. Closing the channel returns every unacknowledged
message to the queue, and RabbitMQ puts requeued messages of a classic queue back in their
original position (https://www.rabbitmq.com/docs/confirms#consumer-nacks-requeue). The
``{ns}.dead`` queue is classic and durable, so a scan leaves it exactly as it found it.
A caller removes a letter only by acknowledging it (``Held.ack``), once its effect is done.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from bgworker.messaging import broker, failover, topology
from bgworker.observe import logs
from bgworker.ops.deadletters import letters

GET_TIMEOUT: Final = 30.0
# How long a scan waits for a quorum queue to have taken back the letters it held (others
# may take some meanwhile: then it stops waiting at this bound).
RETURN_WAIT: Final = 5.0


class DlqError(Exception):
    """An operator-facing failure: broker unreachable, queue missing, publish refused."""


class UndecodableLetterError(DlqError):
    """A letter whose AMQP frames the client library cannot decode (pamqp refuses, for
    example, a timestamp header beyond the year 9999 or a short string property that is
    not UTF-8). aiormq then closes the whole connection, so neither it nor any letter
    behind it can be read; ``actions.purge_undecodable`` removes it."""

    def __init__(self, queue: str, position: int, error: str) -> None:
        self.position = position  # letters before it in the queue
        self.error = error
        super().__init__(
            f"letter #{position + 1} in {queue} cannot be decoded by this AMQP client "
            f"({error}); it and the letters behind it cannot be read. Look at it in the "
            "RabbitMQ management UI, then remove it with `bgworker dlq purge --undecodable`"
        )


@dataclass
class Held:
    """A letter taken from the queue but not acknowledged: ``ack`` removes it for good."""

    letter: letters.Letter
    message: AbstractIncomingMessage

    async def ack(self) -> None:
        await self.message.ack()


def _safe_url(url: str) -> str:
    if "," in url:  # several nodes (messaging.failover)
        return logs.address(url)
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 5672}{parts.path or '/'}"


class DeadLetterQueue:
    """A connection to one namespace's dead-letter queue (``async with``)."""

    def __init__(self, amqp_url: str, namespace: str, queue_type: str = "quorum") -> None:
        self.amqp_url = amqp_url
        self.topology = topology.Topology(namespace, queue_type=queue_type)
        self._connection: AbstractConnection | None = None
        self._confirm: AbstractChannel | None = None

    @property
    def name(self) -> str:
        return self.topology.dead_queue

    async def __aenter__(self) -> DeadLetterQueue:
        await self.connect()
        return self

    async def connect(self) -> None:
        """(Re)open the connection; a letter that cannot be decoded closes it."""
        if self._connection is not None and not self._connection.is_closed:
            await self._connection.close()
        try:
            # A plain connection, not a robust one: an operator command should fail clearly
            # rather than reconnect and silently re-read.
            self._connection = await failover.connect_plain(self.amqp_url, timeout=10)
        except (OSError, aiormq.exceptions.AMQPError, TimeoutError) as exc:
            raise DlqError(
                f"cannot reach RabbitMQ at {_safe_url(self.amqp_url)}: {exc or type(exc).__name__}"
            ) from exc
        try:
            await self.depth()  # fails early, and clearly, when the queue is missing
        except BaseException:
            await self._connection.close()
            raise

    async def __aexit__(self, *exc: object) -> None:
        if self._connection is not None:
            await self._connection.close()

    @property
    def connection(self) -> AbstractConnection:
        if self._connection is None:
            raise RuntimeError("use `async with DeadLetterQueue(...)`")
        return self._connection

    async def depth(self) -> int:
        """Messages ready in the queue. A passive declare on a throwaway channel: a missing
        queue closes the channel it was asked on."""
        channel = await self.connection.channel()
        try:
            return await broker.queue_depth(channel, self.name)
        except aiormq.exceptions.ChannelNotFoundEntity as exc:
            raise DlqError(
                f"queue {self.name!r} does not exist on {_safe_url(self.amqp_url)}: "
                "wrong namespace (BGWORKER_NAMESPACE), or no worker has run yet"
            ) from exc
        finally:
            if not channel.is_closed:
                await channel.close()

    async def publish_request(self, body: bytes, request_id: str, replays: int) -> None:
        """Back onto the requests exchange, confirmed (raises broker.PublishError)."""
        if self._confirm is None or self._confirm.is_closed:
            self._confirm = await broker.open_channel(self.connection)  # type: ignore[arg-type]
        await broker.put_back(self._confirm, self.topology, body, request_id, replays=replays)

    async def drop_undecodable(self, position: int) -> bool:
        """Remove the letter at ``position`` unread (see ``UndecodableLetterError``); True
        when it is gone.

        It cannot be read, so it is found by position: the letters before it are taken and
        held unacknowledged, then it is taken with ``no_ack``: the broker forgets a message
        the moment it sends it in that mode
        (https://www.rabbitmq.com/docs/confirms#acknowledgement-modes), so decoding it is
        not needed. Its failure to decode closes the connection, which returns the held
        letters to their places; the connection is then opened again. Should the queue
        have changed in between, so that the letter taken decodes after all, it is
        published back to the dead-letter exchange (confirmed) and False returned.
        """
        channel = await self.connection.channel()
        queue = await channel.get_queue(self.name, ensure=False)
        try:
            for _ in range(position):
                if await queue.get(no_ack=False, fail=False, timeout=GET_TIMEOUT) is None:
                    raise DlqError("the dead-letter queue changed meanwhile: run it again")
            taken = await queue.get(no_ack=True, fail=False, timeout=GET_TIMEOUT)
        except aiormq.exceptions.InvalidFrameError:
            await self.connect()
            return True
        if taken is not None:
            await self._put_back(taken)
        await self.connect()
        return False

    async def _put_back(self, message: AbstractIncomingMessage) -> None:
        """A letter taken with ``no_ack`` published back to the dead-letter exchange as it
        was (confirmed); the fanout routes it to this queue again."""
        copy = aio_pika.Message(
            message.body,
            headers=message.headers,
            content_type=message.content_type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message.message_id,
        )
        channel = await broker.open_channel(self.connection)  # type: ignore[arg-type]
        try:
            await broker.publish(channel, self.topology.dead_exchange, "", copy)
        finally:
            await channel.close()

    async def migrate_classic(self) -> int:
        """Move every letter of the classic dead-letter queue of before the queues were
        replicated (``topology``) into this one, in order: each is published (confirmed,
        by the default exchange straight to this queue) before it is acknowledged, so none
        is lost; one caught between the two is moved twice. The emptied queue is deleted.
        The number moved; DlqError when there is no such queue."""
        old = self.topology.classic_dead_queue
        if old == self.name:
            raise DlqError(f"{old} is the dead-letter queue (BGWORKER_QUEUE_TYPE=classic)")
        channel = await self.connection.channel()
        confirm = await broker.open_channel(self.connection)  # type: ignore[arg-type]
        moved = 0
        try:
            try:
                await broker.queue_depth(channel, old)
            except aiormq.exceptions.ChannelNotFoundEntity as exc:
                raise DlqError(f"no classic queue {old} to migrate: {exc.args[-1]}") from exc
            queue = await channel.get_queue(old, ensure=False)
            while True:
                message = await queue.get(no_ack=False, fail=False, timeout=GET_TIMEOUT)
                if message is None:
                    break
                await broker.publish(confirm, "", self.name, _copy(message))
                await message.ack()
                moved += 1
            raw = await channel.get_underlay_channel()
            await raw.queue_delete(old, if_empty=True)
        finally:
            for opened in (channel, confirm):
                if not opened.is_closed:
                    await opened.close()
        return moved

    async def scan(self) -> AsyncGenerator[Held, None]:
        """Every message present when the scan starts, in queue order, held unacknowledged
        until the scan ends (then the broker puts back the ones not acknowledged). One
        message is in memory at a time. Use with ``contextlib.aclosing``."""
        total = await self.depth()
        channel = await self.connection.channel()
        taken = acked = 0
        try:
            queue = await channel.get_queue(self.name, ensure=False)
            for position in range(total):
                try:
                    message = await queue.get(no_ack=False, fail=False, timeout=GET_TIMEOUT)
                except aiormq.exceptions.InvalidFrameError as exc:
                    raise UndecodableLetterError(self.name, position, str(exc)) from exc
                if message is None:  # another reader holds the rest
                    break
                taken += 1
                yield Held(letters.Letter.from_message(message), message)
                acked += message.processed
        finally:
            if not channel.is_closed:
                await channel.close()
            if self.topology.quorum and taken > acked:
                await self._returned(total - acked)

    async def _returned(self, expected: int) -> None:
        """Wait (briefly) until the letters a scan held are back: a quorum queue takes
        them back after the channel's close has returned, so a scan right after would
        find fewer. Classic queues have them back at once."""
        deadline = asyncio.get_running_loop().time() + RETURN_WAIT
        # A connection gone (a letter it could not decode closes it) is reopened by the
        # caller, and the next depth it reads is the broker's own.
        while not self.connection.is_closed and asyncio.get_running_loop().time() < deadline:
            try:
                if await self.depth() >= expected:
                    return
            except (DlqError, aiormq.exceptions.AMQPError, RuntimeError):
                return
            await asyncio.sleep(0.05)


def _copy(message: AbstractIncomingMessage) -> aio_pika.Message:
    """A letter as it was, to publish elsewhere: its body, headers and properties, except
    an expiration (it would start again) and the user id (the broker checks it against the
    publishing connection's user)."""
    return aio_pika.Message(
        message.body,
        headers=message.headers,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        priority=message.priority,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
        message_id=message.message_id,
        timestamp=message.timestamp,
        type=message.type,
        app_id=message.app_id,
    )
