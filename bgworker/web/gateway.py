"""The server's RabbitMQ connection, for ``POST /requests`` only (``front_door``).

Opened at the first POST, not when the server starts: a server whose broker is away still
serves downloads and status pages, and a server without API keys never connects at all.
Once open it is aio-pika's robust connection, which reconnects by itself; until it has,
publishing fails and the front door answers 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

from bgworker import settings as settings_mod
from bgworker.contract import bundles, events
from bgworker.messaging import publisher

log = logging.getLogger(__name__)

# How long a POST waits for a first connection before answering 503.
CONNECT_TIMEOUT_SECONDS: Final = 10.0


class Gateway:
    def __init__(self, settings: settings_mod.Settings) -> None:
        self._publisher = publisher.Publisher(
            settings.amqp_url.get_secret_value(),
            namespace=settings.namespace,
            queue_type=settings.queue_type,
        )
        self._connected = False
        # Two first POSTs at once open one connection, not two.
        self._lock = asyncio.Lock()

    async def _connect(self) -> None:
        async with self._lock:
            if self._connected:
                return
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
                    await self._publisher.connect()
            except BaseException:
                # A connection that opened but could not declare the topology is dropped,
                # so the next POST starts clean.
                with contextlib.suppress(Exception):
                    await self._publisher.close()
                raise
            self._connected = True
            log.info("front door: connected to RabbitMQ")

    async def publish(self, event: events.FileRequested) -> None:
        """Publish, confirmed by the broker (``broker.publish_request``); raises what the
        connection or the publish raised (``faults.is_infrastructure`` tells which)."""
        if not self._connected:
            await self._connect()
        await self._publisher.publish(event)

    async def publish_bundle(self, bundle: bundles.BundleRequested) -> None:
        """A ``BundleRequested``, confirmed (``Publisher.publish_bundle``)."""
        if not self._connected:
            await self._connect()
        await self._publisher.publish_bundle(bundle)

    async def close(self) -> None:
        await self._publisher.close()
        self._connected = False
