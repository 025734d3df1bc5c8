"""RabbitMQ connections and confirmed publishing, shared by the publisher and the worker."""

from __future__ import annotations

from typing import Any, Final

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from bgworker.contract import events
from bgworker.messaging import amqp_frames, failover, topology, wire
from bgworker.observe import logs, metrics, tracing

PUBLISH_TIMEOUT: Final = 30.0

# Before any connection exists: a frame pamqp cannot decode must not close it (see there).
amqp_frames.install()


class PublishError(Exception):
    """The broker did not confirm the message (nack, unroutable, or timeout)."""


async def connect(
    url: str, *, name: str, outage: logs.Outage | None = None
) -> AbstractRobustConnection:
    """A robust connection: it reconnects and restores channels, exchanges, queues and
    consumers. ``url`` may list several nodes, comma-separated: each reconnect moves on to
    the next one that answers (``failover``). Its loss is one WARNING and its return one
    INFO, through ``outage`` (the worker's shared one; by default one of its own), instead
    of aio-pika's and aiormq's tracebacks and per-channel errors (``logs.LibraryNoise``)."""
    logs.quiet_libraries()
    told = outage or logs.Outage(f"RabbitMQ at {logs.address(url)}")
    connection = await failover.connect_robust(url, client_properties={"connection_name": name})

    def on_close(_: object, exc: BaseException | None) -> None:
        if connection.is_closed or getattr(connection, "close_called", False):
            return  # closed on purpose: no reconnect follows
        told.lost(exc, name)

    def on_reconnect(_: object) -> None:
        told.back()

    connection.close_callbacks.add(on_close)
    connection.reconnect_callbacks.add(on_reconnect)
    return connection


async def open_channel(connection: AbstractRobustConnection) -> AbstractChannel:
    # Confirms + on_return_raises: publish() returns only once the broker has the message,
    # and a mandatory message nobody could route raises instead of vanishing.
    return await connection.channel(publisher_confirms=True, on_return_raises=True)


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
        # The connection went (its node did): not confirmed either; the robust connection
        # moves on to another node, and the caller may publish again.
        aio_pika.exceptions.AMQPConnectionError,
        ConnectionError,
        TimeoutError,
    ) as exc:
        raise PublishError(f"{exchange}/{routing_key}: not confirmed ({exc!r})") from exc


async def put_back(
    channel: AbstractChannel,
    topo: topology.Topology,
    body: dict[str, Any] | bytes,
    request_id: str,
    *,
    replays: int | None = None,
) -> None:
    """Publish a request onto the requests exchange, confirmed: the one way a request goes
    (back) to the work queue (producers, release, reaper, recovery, dead-letter replay)."""
    # The current span (if tracing) goes along: the job that claims it joins its trace.
    message = wire.request(body, request_id, replays=replays, trace=tracing.carrier())
    await publish(channel, topo.requests_exchange, topology.REQUESTED_KEY, message)


async def publish_request(
    channel: AbstractChannel, topo: topology.Topology, event: events.FileRequested
) -> None:
    with tracing.span("publish", kind="producer", request_id=str(event.id)):
        await put_back(channel, topo, event.model_dump(mode="json"), str(event.id))


async def publish_cancel(
    channel: AbstractChannel, topo: topology.Topology, cancel: events.CancelRequested
) -> None:
    """A producer's cancel, confirmed into the cancel queue."""
    await publish(channel, topo.requests_exchange, topology.CANCEL_KEY, wire.cancel(cancel))


async def publish_retry(
    channel: AbstractChannel, topo: topology.Topology, body: bytes, request_id: str, delay: float
) -> None:
    """To the retry queue of the ``delay`` tier, whose TTL dead-letters it back to the
    requests exchange (see ``topology``)."""
    message = wire.request(body, request_id, trace=tracing.carrier())
    await publish(channel, topo.retry_exchange, topo.retry_key(delay), message)


async def publish_dead_letter(
    channel: AbstractChannel,
    topo: topology.Topology,
    body: bytes,
    letter: wire.DeadLetter,
    *,
    worker_id: str,
    message_id: str | None,
    routing_key: str | None,
) -> None:
    """To the dead-letter exchange, confirmed, with headers that say why."""
    message = wire.dead_letter(
        body, letter, worker_id=worker_id, message_id=message_id, routing_key=routing_key
    )
    await publish(channel, topo.dead_exchange, "", message)
    metrics.DEAD_LETTERS.labels(letter.reason).inc()


async def publish_event(
    channel: AbstractChannel,
    topo: topology.Topology,
    routing_key: str,
    event: events.FileReady | events.FileFailed,
) -> None:
    # Events go to whoever bound a queue; none bound is fine, so not mandatory.
    message = wire.event(event, routing_key)
    await publish(channel, topo.events_exchange, routing_key, message, mandatory=False)
