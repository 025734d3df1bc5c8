"""RabbitMQ connections and confirmed publishing, shared by the publisher and the worker."""

from __future__ import annotations

import json
from typing import Any, Final

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractRobustConnection, DeliveryMode

from bgworker import amqp_frames, events, topology

PUBLISH_TIMEOUT: Final = 30.0

# Before any connection exists: a frame pamqp cannot decode must not close it (see there).
amqp_frames.install()


class PublishError(Exception):
    """The broker did not confirm the message (nack, unroutable, or timeout)."""


async def connect(url: str, *, name: str) -> AbstractRobustConnection:
    # Robust connections reconnect and restore channels, exchanges, queues and consumers.
    return await aio_pika.connect_robust(url, client_properties={"connection_name": name})


async def open_channel(connection: AbstractRobustConnection) -> AbstractChannel:
    # Confirms + on_return_raises: publish() returns only once the broker has the message,
    # and a mandatory message nobody could route raises instead of vanishing.
    return await connection.channel(publisher_confirms=True, on_return_raises=True)


def request_message(
    body: dict[str, Any] | bytes, message_id: str, **headers: Any
) -> aio_pika.Message:
    raw = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
    return aio_pika.Message(
        raw,
        content_type="application/json",
        delivery_mode=DeliveryMode.PERSISTENT,
        message_id=message_id,
        type="FileRequested",
        headers=headers or None,
    )


async def queue_depth(channel: AbstractChannel, name: str) -> int:
    """Ready messages in a queue. A raw passive declare: aio-pika's robust channel would
    return a cached queue object with a stale count, and a full declare needs the exact
    arguments."""
    raw = await channel.get_underlay_channel()
    ok = await raw.queue_declare(name, passive=True)
    return int(ok.message_count or 0)


async def publish(
    channel: AbstractChannel,
    exchange: str,
    routing_key: str,
    message: aio_pika.Message,
    *,
    mandatory: bool = True,
) -> None:
    try:
        ex = await channel.get_exchange(exchange, ensure=False)
        await ex.publish(message, routing_key, mandatory=mandatory, timeout=PUBLISH_TIMEOUT)
    except (
        aio_pika.exceptions.DeliveryError,
        # No such exchange (topology not declared): the broker closes the channel, and until
        # aio-pika has restored it in the background, publishing finds it closed.
        aio_pika.exceptions.ChannelNotFoundEntity,
        aio_pika.exceptions.ChannelInvalidStateError,
        TimeoutError,
    ) as exc:
        raise PublishError(f"{exchange}/{routing_key}: not confirmed ({exc!r})") from exc


async def publish_request(
    channel: AbstractChannel, topo: topology.Topology, event: events.FileRequested
) -> None:
    message = request_message(event.model_dump(mode="json"), str(event.id))
    await publish(channel, topo.requests_exchange, topology.REQUESTED_KEY, message)


async def publish_event(
    channel: AbstractChannel,
    topo: topology.Topology,
    routing_key: str,
    event: events.FileReady | events.FileFailed,
) -> None:
    # Events go to whoever bound a queue; none bound is fine, so not mandatory. The message
    # id is the request id: one per request, for consumers that deduplicate.
    message = aio_pika.Message(
        event.model_dump_json().encode(),
        content_type="application/json",
        delivery_mode=DeliveryMode.PERSISTENT,
        message_id=f"{event.id}.{routing_key}",
        type=type(event).__name__,
    )
    await publish(channel, topo.events_exchange, routing_key, message, mandatory=False)
