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
from concurrent.futures import Future
from types import TracebackType
from typing import Any, Self

import pydantic
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from bgworker.contract import events
from bgworker.messaging import broker, topology


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

    async def connect(self) -> None:
        self._connection = await broker.connect(self._url, name="bgworker-publisher")
        self._channel = await broker.open_channel(self._connection)
        if self._declare:
            # Declaring is idempotent; it makes the first publish work on an empty broker.
            await self.topology.declare_intake(self._channel)

    async def close(self) -> None:
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


class SyncPublisher:
    """For code without an event loop (Django, Flask): a private loop in a daemon thread.

    Thread-safe: WSGI worker threads may share one instance. ``publish`` blocks until the
    broker confirms.
    """

    def __init__(
        self,
        amqp_url: str,
        *,
        namespace: str = "bgworker",
        queue_type: str = "quorum",
        timeout: float = 30.0,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="bgworker-publisher", daemon=True
        )
        self._thread.start()
        self._timeout = timeout
        self._publisher = Publisher(amqp_url, namespace=namespace, queue_type=queue_type)
        try:
            self._call(self._publisher.connect())
        except BaseException:
            self._stop_loop()
            raise

    def _call(self, coro: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(self._timeout)

    def publish(self, event: events.FileRequested) -> None:
        self._call(self._publisher.publish(event))

    def close(self) -> None:
        try:
            self._call(self._publisher.close())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(self._timeout)
        self._loop.close()

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
    }
    if args.lifetime is not None:  # 0 too: the contract refuses it, it is not "unset"
        raw["lifetime_seconds"] = args.lifetime
    try:
        return events.FileRequested.model_validate(raw)
    except pydantic.ValidationError as exc:
        raise ValueError(f"invalid request: {events.describe_validation_error(exc)}") from None
