"""The queues a connection declares without depending on them to connect.

A robust channel redeclares what was declared on it each time it reconnects, and a
declaration the broker refuses fails the reconnect: with a queue whose members are down
(``NOT_FOUND - home node ... of durable queue ... is down or inaccessible``), the client
could not connect to any surviving node. So ``Declarations`` declares the dead-letter and
retry queues (and, for a producer, the work queue) on a throwaway channel, in the
background: a failure is one WARNING and another try ``RETRY_SECONDS`` later, never a
blocked connection, and each reconnect declares again (the queues may have been deleted).

It also retires the classic ``ns.dead`` and ``ns.retry.Nms`` queues of before the queues
were replicated (``topology``): once the replicated queue is bound, the old one is unbound
(so nothing new reaches it), and deleted once empty. An old retry queue empties by itself
(its messages expire back to the requests exchange); old dead letters stay until
``bgworker dlq migrate`` moves them, which the WARNING says.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Final

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from bgworker.messaging import topology as topology_mod
from bgworker.observe import logs

log = logging.getLogger(__name__)
RETRY_SECONDS: Final = 10.0
# A throwaway channel's calls: a broker that does not answer must not hold the loop of tries.
CALL_TIMEOUT: Final = 30.0


class Declarations:
    """Declares in the background until done; again after each reconnect (``start``)."""

    def __init__(
        self,
        connection: AbstractRobustConnection,
        topology: topology_mod.Topology,
        *,
        work_queue: bool,
        retry_seconds: float = RETRY_SECONDS,
    ) -> None:
        self.connection = connection
        self.topology = topology
        self.work_queue = work_queue  # a producer's: so the first publish finds it
        self.retry_seconds = retry_seconds
        self.done = asyncio.Event()  # set while everything is declared
        self._again = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._warned = False
        self._told_old_letters = False
        # Classic queues of before still there: looked at again every ``retry_seconds``.
        self._leftovers = False

    async def start(self) -> bool:
        """Declare once now (True when done), and keep trying in the background."""
        ok = await self.attempt()
        self.connection.reconnect_callbacks.add(self._on_reconnect)
        self._task = asyncio.create_task(self._run(), name="declarations")
        return ok

    async def close(self) -> None:
        self.connection.reconnect_callbacks.discard(self._on_reconnect)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _on_reconnect(self, _: object) -> None:
        self.done.clear()
        self._again.set()

    async def _run(self) -> None:
        while True:
            if self.done.is_set() and not self._leftovers:
                await self._again.wait()
            self._again.clear()
            if not await self.attempt():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.retry_seconds):
                        await self._again.wait()

    async def attempt(self) -> bool:
        """One pass on a throwaway channel; True when everything was declared."""
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                await self._declare()
        except (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError, TimeoutError) as exc:
            self.done.clear()
            level = logging.DEBUG if self._warned else logging.WARNING
            self._warned = True
            log.log(
                level,
                "could not declare the %s queues (%s); publishing and consuming go on, "
                "declaring again in %.0f s",
                self.topology.namespace,
                logs.describe(exc),
                self.retry_seconds,
            )
            return False
        if self._warned:
            log.info("declared the %s queues", self.topology.namespace)
        self._warned = False
        self.done.set()
        return True

    async def _declare(self) -> None:
        """Each queue on a channel of its own (a refusal closes the channel), each tried
        even when one before failed: the work queue (for a producer) does not wait for the
        dead-letter queue. The first error is raised once all were tried."""
        topo = self.topology
        steps: list[Callable[[AbstractChannel], Awaitable[object]]] = []
        if self.work_queue:
            steps.append(topo.declare_work)
        steps.append(topo.declare_dead_queue)
        # A producer's retry tiers are not the workers': it leaves those to them.
        for delay in [] if self.work_queue else topo.tiers:
            steps.append(functools.partial(topo.declare_retry_queue, delay=delay))
        errors: list[BaseException] = []
        for step in steps:
            channel = await self._channel()
            try:
                await step(channel)
            except aiormq.exceptions.AMQPChannelError as exc:
                errors.append(exc)
            finally:
                await _close(channel)
        if errors:
            raise errors[0]
        if topo.quorum:
            self._leftovers = await self._retire_classic()

    async def _channel(self) -> AbstractChannel:
        # A plain channel, not the connection's robust kind: a refused declaration closes
        # it, and it must not reopen and redeclare by itself.
        channel = aio_pika.Channel(self.connection)
        await channel.initialize()
        return channel

    async def _retire_classic(self) -> bool:
        """Unbind the classic queues of before, delete those that are empty; True when some
        are left."""
        topo = self.topology
        old = [(topo.classic_dead_queue, topo.dead_exchange, "")]
        old += [
            (topo.classic_retry_queue(d), topo.retry_exchange, topo.retry_key(d))
            for d in ([] if self.work_queue else topo.tiers)
        ]
        left = False
        for name, exchange, key in old:
            try:
                depth = await self._depth(name)
            except aiormq.exceptions.ChannelNotFoundEntity as exc:
                # Its node is down: nothing reaches it meanwhile; retired after a reconnect.
                log.debug("classic queue %s not retired now: %s", name, logs.describe(exc))
                left = True
                continue
            if depth is None:
                continue  # none: a new deployment, or retired already
            channel = await self._channel()
            try:
                raw = await channel.get_underlay_channel()
                await raw.queue_unbind(queue=name, exchange=exchange, routing_key=key)
            finally:
                await _close(channel)
            if depth == 0:
                await self._delete_if_empty(name)
                continue
            left = True
            if name == topo.classic_dead_queue and not self._told_old_letters:
                self._told_old_letters = True
                log.warning(
                    "the classic dead-letter queue %s from before holds %d letter(s); new "
                    "letters go to %s: run `bgworker dlq migrate` to move the old ones there",
                    name,
                    depth,
                    topo.dead_queue,
                )
        return left

    async def _depth(self, name: str) -> int | None:
        channel = await self._channel()
        try:
            return await _passive_depth(channel, name)
        except aiormq.exceptions.ChannelNotFoundEntity as exc:
            if "home node" in str(exc):  # there, on a node that is down
                raise
            return None
        finally:
            await _close(channel)

    async def _delete_if_empty(self, name: str) -> None:
        channel = await self._channel()
        try:
            raw = await channel.get_underlay_channel()
            await raw.queue_delete(name, if_empty=True)
            log.info("deleted the empty classic queue %s (replaced by a quorum queue)", name)
        except aiormq.exceptions.ChannelPreconditionFailed:
            pass  # a message arrived after all: the next pass deletes it
        finally:
            await _close(channel)


async def _passive_depth(channel: AbstractChannel, name: str) -> int:
    raw = await channel.get_underlay_channel()
    ok = await raw.queue_declare(name, passive=True)
    return int(ok.message_count or 0)


async def _close(channel: AbstractChannel) -> None:
    with contextlib.suppress(Exception):
        if not channel.is_closed:
            await channel.close()
