"""A worker side task that samples the broker and the database into gauges.

Scrapes read only what was sampled: a scrape never waits on RabbitMQ or PostgreSQL, and
however often Prometheus scrapes, each worker asks them once per
``BGWORKER_METRICS__INTERVAL_SECONDS``. Queue depth comes from a passive ``queue.declare``,
whose ``declare-ok`` carries the queue's ready message count (AMQP 0-9-1, RabbitMQ's
"Queues" guide); it is done on a channel of its own, because the broker closes a channel
whose passive declare names a queue that is gone (404), and that must not be the consumer's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass

from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from bgworker import faults, store
from bgworker import settings as settings_mod
from bgworker.contract import states
from bgworker.messaging import broker, topology
from bgworker.observe import logs, metrics

log = logging.getLogger(__name__)


async def start(
    stack: AsyncExitStack,
    cfg: settings_mod.MetricsSettings,
    db: store.Store,
    connection: AbstractRobustConnection,
    topo: topology.Topology,
    stopping: asyncio.Event,
    health: Mapping[str, bool],
) -> tuple[asyncio.Task[None], str | None]:
    """A worker's metrics: its registry served when a port is set (closed by ``stack``),
    with ``health`` (health.Health's dict) at /healthz for a readiness probe, and the
    sampler task either way. Returns the task and the URL served, if any."""
    url = None
    if cfg.port is not None:
        served, url = await metrics.serve(metrics.WORKER, cfg.host, cfg.port, health)
        stack.push_async_callback(served.cleanup)
        log.info("metrics on %s", url)
    sampling = Sampler(
        db=db,
        channel=await broker.open_channel(connection),
        topology=topo,
        interval_seconds=cfg.interval_seconds,
    )
    return asyncio.create_task(sampling.run(stopping), name="metrics-sampler"), url


@dataclass(kw_only=True)
class Sampler:
    db: store.Store
    channel: AbstractChannel
    topology: topology.Topology
    interval_seconds: float

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                await self.sample()
            except Exception as exc:  # a service away: keep the last values, try again
                if not faults.report(exc, "metrics sampler"):
                    log.warning("metrics sampler: %s", logs.describe(exc))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval_seconds):
                    await stopping.wait()

    async def sample(self) -> None:
        for label, name in (
            ("work", self.topology.work_queue),
            ("dead", self.topology.dead_queue),
        ):
            metrics.QUEUE_MESSAGES.labels(label).set(await broker.queue_depth(self.channel, name))
        backlog = {b.kind: b for b in await self.db.gauges.outbox_backlog()}
        for kind in states.EffectKind:
            found = backlog.get(kind)
            metrics.OUTBOX_PENDING.labels(kind).set(found.pending if found else 0)
        metrics.OUTBOX_OLDEST_SECONDS.set(
            max((b.oldest_seconds for b in backlog.values()), default=0)
        )
        counts = await self.db.maintenance.count_by_status()
        # Every status gets a value, 0 included, so a status that emptied does not keep
        # its last count.
        for status in states.Status:
            metrics.REQUESTS.labels(status).set(counts.get(status, 0))
        await self._sample_tenants(counts)
        metrics.SAMPLED.set(time.time())

    async def _sample_tenants(self, counts: dict[str, int]) -> None:
        """The busiest tenants by name, the rest as ``other`` (a tenant that left the top
        loses its series: cleared and set again each time)."""
        top = await self.db.fairness.tenant_counts(limit=metrics.TOP_TENANTS + 1)
        named, rest = top[: metrics.TOP_TENANTS], top[metrics.TOP_TENANTS :]
        metrics.TENANT_REQUESTS.clear()
        for t in named:
            # A tenant named "other" shares the series of the rest: harmless, and bounded.
            name = t.tenant or "(none)"
            metrics.TENANT_REQUESTS.labels(name, states.Status.RUNNING).set(t.in_flight)
            metrics.TENANT_REQUESTS.labels(name, states.Status.PARKED).set(t.parked)
        if rest:
            for status, shown in (
                (states.Status.RUNNING, sum(t.in_flight for t in named)),
                (states.Status.PARKED, sum(t.parked for t in named)),
            ):
                others = max(0, counts.get(status, 0) - shown)
                metrics.TENANT_REQUESTS.labels(metrics.OTHER_TENANTS, status).set(others)
