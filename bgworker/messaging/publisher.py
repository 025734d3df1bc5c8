"""Publishing ``FileRequested`` from other services: async, and a sync facade for WSGI.

    async with Publisher(settings.amqp_url, namespace="bgworker") as pub:
        await pub.publish(events.FileRequested(...))

``publish`` returns once RabbitMQ has confirmed the message into the work queue; an
unroutable message (topology not declared) raises ``broker.PublishError``. ``from_flags``
makes the event ``bgworker publish`` describes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import uuid
from collections.abc import Coroutine
from concurrent.futures import Future
from types import TracebackType
from typing import Any, Self, TypeVar

import pydantic
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from bgworker.contract import bundles, events
from bgworker.messaging import broker, declaring, topology, wire

T = TypeVar("T")


class Publisher:
    def __init__(
        self,
        amqp_url: str,
        *,
        namespace: str = "bgworker",
        queue_type: str = "quorum",
        declare: bool = True,
    ) -> None:
        self._url = amqp_url
        self.topology = topology.Topology(namespace, queue_type=queue_type)
        self._declare = declare
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._declarations: declaring.Declarations | None = None

    async def connect(self) -> None:
        self._connection = await broker.connect(self._url, name="bgworker-publisher")
        self._channel = await broker.open_channel(self._connection)
        if self._declare:
            # Declaring is idempotent; it makes the first publish work on an empty broker.
            # Exchanges (all that publishing needs) on the robust channel: any node serves
            # them. Queues beside it, so a queue whose node is down never blocks connecting
            # or reconnecting (``declaring``); a publish no queue took raises PublishError.
            await self.topology.declare_exchanges(self._channel)
            self._declarations = declaring.Declarations(
                self._connection, self.topology, work_queue=True
            )
            await self._declarations.start()

    async def close(self) -> None:
        if self._declarations is not None:
            await self._declarations.close()
            self._declarations = None
        if self._connection is not None:
            await self._connection.close()
            self._connection = self._channel = None

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def publish(self, event: events.FileRequested) -> None:
        if self._channel is None:
            raise RuntimeError("Publisher is not connected: use `async with` or connect()")
        await broker.publish_request(self._channel, self.topology, event)

    async def publish_recorded(self, body: dict[str, Any], request_id: uuid.UUID) -> None:
        """A ``FileRequested`` as recorded (the producer outbox's relay), sent unchanged:
        the worker validates it as any other."""
        if self._channel is None:
            raise RuntimeError("Publisher is not connected: use `async with` or connect()")
        await broker.put_back(self._channel, self.topology, body, str(request_id))

    async def publish_bundle(self, bundle: bundles.BundleRequested) -> None:
        """Publish a ``BundleRequested`` (routing key ``bundle.requested``, docs/bundles.md):
        its parts are built as requests of their own; publishing it twice is harmless."""
        if self._channel is None:
            raise RuntimeError("Publisher is not connected: use `async with` or connect()")
        message = wire.request(bundle.model_dump(mode="json"), str(bundle.id))
        exchange = self.topology.requests_exchange
        await broker.publish(self._channel, exchange, topology.BUNDLE_KEY, message)

    async def cancel(self, request_id: uuid.UUID) -> None:
        """Publish ``CancelRequested`` for ``request_id`` (idempotent; it may come before
        the request itself)."""
        if self._channel is None:
            raise RuntimeError("Publisher is not connected: use `async with` or connect()")
        cancel = events.CancelRequested(id=request_id)
        await broker.publish_cancel(self._channel, self.topology, cancel)


class PrivateLoop:
    """An event loop on a daemon thread of its own, for code that has none (Django, Flask,
    scripts): ``call`` runs a coroutine on it from any thread and blocks for its result.
    The one such loop of the package: ``SyncPublisher`` and ``producing.SyncProducer``."""

    def __init__(self, name: str, *, timeout: float) -> None:
        self.loop = asyncio.new_event_loop()
        self.timeout = timeout  # how long ``close`` waits for the thread
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None) -> T:
        """``coro``'s result, or its error; past ``timeout`` seconds (None: no bound) it is
        cancelled, not left running on the loop, and ``TimeoutError`` raised."""
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(self.timeout)
        self.loop.close()


class SyncPublisher:
    """For code without an event loop (Django, Flask): a ``Publisher`` on a private loop.

    Thread-safe: WSGI worker threads may share one instance. ``publish`` blocks until the
    broker confirms, at most ``timeout`` seconds (connecting and closing too). A failed
    connect raises from the constructor and leaves no thread behind.
    """

    def __init__(
        self,
        amqp_url: str,
        *,
        namespace: str = "bgworker",
        queue_type: str = "quorum",
        timeout: float = 30.0,
        name: str = "bgworker-publisher",  # the loop thread's
    ) -> None:
        self._timeout = timeout
        self.loop = PrivateLoop(name, timeout=timeout)
        # The async publisher, on ``loop``: what a producer built on this one publishes with.
        self.publisher = Publisher(amqp_url, namespace=namespace, queue_type=queue_type)
        try:
            self.loop.call(self.publisher.connect(), timeout)
        except BaseException:
            self.loop.close()
            raise

    def publish(self, event: events.FileRequested) -> None:
        self.loop.call(self.publisher.publish(event), self._timeout)

    def cancel(self, request_id: uuid.UUID) -> None:
        self.loop.call(self.publisher.cancel(request_id), self._timeout)

    def close(self) -> None:
        try:
            self.loop.call(self.publisher.close(), self._timeout)
        finally:
            self.loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def from_flags(args: argparse.Namespace) -> events.FileRequested:
    """The request ``bgworker publish``'s flags describe; ValueError saying what is wrong."""
    try:
        criteria = json.loads(args.criteria)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--criteria is not JSON: {exc}") from None
    # A requester is whatever the flags name: the contract lets one carry only a language
    # or a time zone (the handler writes the file in them), and checks each value alike.
    given = {
        "id": args.requester_id,
        "email": args.email,
        "language": args.language,
        "timezone": args.timezone,
    }
    raw: dict[str, Any] = {
        "id": args.id or str(uuid.uuid4()),
        "file_type": args.file_type,
        "criteria": criteria,
        # Left out, the worker uses what the file type's handler declares.
        "filename": args.filename,
        "content_type": args.content_type,
        "description": args.description,
        "requester": {k: v for k, v in given.items() if v is not None} or None,
        "callback_url": args.callback_url,
        # Left out, the requester's id is the tenant (events.tenant_of).
        "tenant": args.tenant,
        "priority": args.priority,
    }
    if args.lifetime is not None:  # 0 too: the contract refuses it, it is not "unset"
        raw["lifetime_seconds"] = args.lifetime
    try:
        return events.FileRequested.model_validate(raw)
    except pydantic.ValidationError as exc:
        raise ValueError(f"invalid request: {events.describe_validation_error(exc)}") from None
