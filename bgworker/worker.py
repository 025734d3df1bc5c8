"""The consumer pool: run, stop, drain.

A worker consumes the work queue only while it has a free slot (see ``intake``) and runs
each delivery as a named task (see ``jobs``). Side tasks: the intake (reopens the consumer
when a slot frees), the reaper (requeues requests whose worker died) and the outbox
dispatcher (emails, events). The first stop request cancels the consumer and drains
running jobs up to ``drain_timeout_seconds``, then releases what is left back to the
queue; the CLI turns a second signal into an immediate exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections import Counter
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from bgworker import (
    broker,
    faults,
    handlers,
    intake,
    jobs,
    loopwatch,
    metrics,
    notify,
    outbox,
    storage,
    store,
    tokens,
    topology,
)
from bgworker import settings as settings_mod

log = logging.getLogger(__name__)

REAP_BATCH = 100
INFRA_BACKOFF_SECONDS = 1.0
HEALTH_INTERVAL_SECONDS = 5.0


def make_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass
class Limits:
    """Batch mode (cron-style runs): stop after this many jobs or seconds, or when idle."""

    max_jobs: int | None = None
    max_seconds: float | None = None
    burst: bool = False


class Worker:
    def __init__(
        self,
        settings: settings_mod.Settings,
        registry: handlers.Registry,
        *,
        worker_id: str | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.worker_id = worker_id or make_worker_id()
        self.limits = limits or Limits()
        self.topology = topology.Topology(
            settings.namespace,
            tuple(settings.worker.retry_delays_seconds),
            settings.queue_type,
        )
        self.stopping = asyncio.Event()
        self.outcomes: Counter[str] = Counter()
        self.ready = asyncio.Event()  # set once consuming: tests and health checks wait on it
        self.intake: intake.Intake | None = None  # set once consuming
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: jobs.Runner | None = None
        self._started = time.monotonic()
        self.health: dict[str, bool] = {}
        self.crashed = False  # a side task died: the CLI exits non-zero

    def stop(self) -> None:
        self.stopping.set()

    async def run(self) -> Counter[str]:
        cfg = self.settings.worker
        signer = tokens.Signer(self.settings.tokens)
        files = storage.LocalStorage(self.settings.storage_dir)
        files.ensure()
        async with AsyncExitStack() as stack:
            pool = await store.create_pool(
                self.settings.database_url.get_secret_value(), max_size=cfg.concurrency + 4
            )
            stack.push_async_callback(pool.close)
            db = store.Store(pool)
            connection = await broker.connect(
                self.settings.amqp_url.get_secret_value(), name=f"bgworker-worker {self.worker_id}"
            )
            stack.push_async_callback(connection.close)
            channel = await broker.open_channel(connection)
            queue = await self.topology.declare(channel)
            # Effects get their own channel so a slow consumer channel never delays them.
            effects_channel = await broker.open_channel(connection)
            dispatcher = outbox.Dispatcher(
                db,
                notify.Mailer(self.settings.smtp),
                signer,
                effects_channel,
                self.topology,
                self.settings.web.public_url,
                cfg.outbox_retry_seconds,
                cfg.outbox_interval_seconds,
                cfg.outbox_claim_seconds,
            )
            # Outbox rows this worker writes start claimed by it and go straight to its
            # dispatcher after their commit; the sweep covers the rest.
            db.claim_effects_seconds = cfg.outbox_claim_seconds
            db.on_effects = dispatcher.take
            self._runner = jobs.Runner(
                self.settings,
                self.registry,
                db,
                files,
                channel,
                self.topology,
                dispatcher,
                self.worker_id,
            )
            # Prefetch 1, whatever the concurrency: see ``intake`` (flow control).
            await channel.set_qos(prefetch_count=intake.PREFETCH)
            self.intake = intake.Intake(
                queue,
                self._on_message,
                slots=cfg.concurrency,
                limit=self.limits.max_jobs,
                stopping=self.stopping,
            )
            await self.intake.sync()  # consuming from here on
            side = [
                asyncio.create_task(self.intake.run(), name="intake"),
                asyncio.create_task(dispatcher.run(self.stopping), name="outbox-dispatcher"),
                asyncio.create_task(self._reap_loop(db, channel), name="lease-reaper"),
                asyncio.create_task(self._health_loop(db, connection), name="health"),
            ]
            if cfg.loop_block_warning_seconds > 0:
                watch = loopwatch.LoopWatch(cfg.loop_block_warning_seconds, self._runner.execution)
                side.append(asyncio.create_task(watch.run(self.stopping), name="loop-watchdog"))
            if self.limits.burst or self.limits.max_seconds:
                side.append(asyncio.create_task(self._watch_limits(channel), name="batch-limits"))
            log.info(
                "worker %s consuming %s (concurrency %d, handlers: %s)",
                self.worker_id,
                self.topology.work_queue,
                cfg.concurrency,
                ", ".join(self.registry.file_types),
            )
            self.ready.set()
            await self._wait_until_stopped(side)
            try:
                await self.intake.close()
            except Exception as exc:  # channel gone: it took its consumer with it
                log.warning("cancelling the consumer: %s", exc)
            await self._drain()
            await asyncio.wait(side, timeout=cfg.outbox_interval_seconds + 5)
            await jobs.cancel_all(side)
            # Jobs that finished during the drain handed their effects to the dispatcher
            # after its loop ended: let them complete before the pool and channel close, or
            # their claims would run out and another worker would repeat them.
            await dispatcher.drain()
        summary = ", ".join(f"{k}={v}" for k, v in sorted(self.outcomes.items())) or "no jobs"
        flow = ", ".join(f"{k}={v}" for k, v in sorted(self.intake.counts.items()))
        log.info(
            "worker %s stopped after %.1fs: %s (deliveries: %s)",
            self.worker_id,
            time.monotonic() - self._started,
            summary,
            flow or "none",
        )
        return self.outcomes

    async def _wait_until_stopped(self, side: list[asyncio.Task[Any]]) -> None:
        stop = asyncio.create_task(self.stopping.wait(), name="stop-event")
        done, _ = await asyncio.wait([stop, *side], return_when=asyncio.FIRST_COMPLETED)
        asked_to_stop = self.stopping.is_set()
        for task in done:
            if task is stop or task.cancelled():
                continue
            # Side tasks run until the stop event: one that ended first crashed or returned
            # by mistake. Stop rather than run without a reaper or dispatcher.
            if task.exception() is not None:
                log.error("side task %s crashed", task.get_name(), exc_info=task.exception())
            elif not asked_to_stop:
                log.error("side task %s ended unexpectedly", task.get_name())
            else:
                continue
            self.crashed = True
            self.stopping.set()
        stop.cancel()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        """The intake admitted this delivery into a free slot: start it."""
        task = asyncio.create_task(self._process(message), name=f"job-{message.message_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _process(self, message: AbstractIncomingMessage) -> None:
        assert self.intake is not None
        outcome = "error"
        try:
            outcome = await self._handle_until_settled(message)
        finally:
            # A duplicate ran nothing: it does not count towards --max-jobs.
            self.intake.release(counted=outcome != "duplicate")
        self.outcomes[outcome] += 1
        if self.limits.max_jobs and self._finished_jobs() >= self.limits.max_jobs:
            self.stop()

    async def _handle_until_settled(self, message: AbstractIncomingMessage) -> str:
        """Run the delivery; on an infrastructure failure (database away) before it was
        acked, keep it and retry here with backoff. Handing it back at once would spin it
        through the queue, and a quorum queue dead-letters a message after 20 deliveries.
        Any other failure before the ack is the message's: dead-lettered at once."""
        assert self._runner is not None
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.settings.worker.hold_timeout_seconds
        delay = INFRA_BACKOFF_SECONDS
        while True:
            try:
                return await self._runner.handle(message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if message.processed:
                    # Acked after the claim: the lease expires and the reaper requeues it.
                    log.exception(
                        "request %s: failed after its claim; the reaper will requeue "
                        "it when the lease expires",
                        message.message_id,
                    )
                    return "error"
                if not faults.is_infrastructure(exc):
                    return await self._reject_unprocessable(message, exc)
                if self.stopping.is_set() or loop.time() + delay > give_up:
                    log.warning(
                        "delivery %s: giving it back to the queue: %s", message.message_id, exc
                    )
                    with contextlib.suppress(Exception):
                        await message.nack(requeue=True)
                    return "error"
                log.warning("delivery %s: %s; retrying in %.1fs", message.message_id, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _reject_unprocessable(self, message: AbstractIncomingMessage, exc: Exception) -> str:
        """Last line of defence: an error ``Runner.handle`` did not classify, raised before
        the ack. Holding it would loop on the same poison; dead-letter it instead."""
        assert self._runner is not None
        log.error(
            "delivery %s: unexpected %s before its claim; dead-lettering it",
            message.message_id,
            type(exc).__name__,
            exc_info=exc,
        )
        try:
            await self._runner.reject(
                message, "unprocessable", type(exc).__name__, str(exc) or repr(exc), None
            )
        except Exception as again:  # the broker is away: hand it back, it comes again
            log.warning("delivery %s: could not dead-letter it: %s", message.message_id, again)
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
            return "error"
        return "unprocessable"

    def _finished_jobs(self) -> int:
        return sum(n for k, n in self.outcomes.items() if k != "duplicate")

    async def _drain(self) -> None:
        if not self._tasks:
            return
        grace = self.settings.worker.drain_timeout_seconds
        log.info("draining %d job(s), up to %.0fs", len(self._tasks), grace)
        _, pending = await asyncio.wait(list(self._tasks), timeout=grace)
        if pending:
            assert self._runner is not None
            log.warning("drain timeout: releasing %d job(s) back to the queue", len(pending))
            self._runner.releasing = True
            await jobs.cancel_all(list(pending))

    async def _reap_loop(self, db: store.Store, channel: AbstractChannel) -> None:
        async def requeue(event: dict[str, Any]) -> None:
            await broker.publish(
                channel,
                self.topology.requests_exchange,
                topology.REQUESTED_KEY,
                broker.request_message(event, str(event.get("id"))),
            )

        async def dead_letter(row: store.RequestRow) -> None:
            letter = jobs.DeadLetter(
                "worker_lost", "WorkerLostError", row.last_error or "", row.attempts
            )
            body = json.dumps(row.event, separators=(",", ":")).encode()
            message = jobs.dead_letter_message(
                body, letter, worker_id=self.worker_id, message_id=str(row.id), routing_key=None
            )
            await broker.publish(channel, self.topology.dead_exchange, "", message)
            metrics.DEAD_LETTERS.labels(letter.reason).inc()

        while not self.stopping.is_set():
            try:
                report = await db.reap_expired_leases(
                    REAP_BATCH, requeue, dead_letter, outbox.failed_effects
                )
                recovered = await db.recover_stalled(
                    self.settings.worker.recovery_grace_seconds, REAP_BATCH, requeue
                )
            except Exception as exc:  # database or broker away: try next round
                log.warning("reaper: %s", exc)
            else:
                if report.requeued or report.cancelled or report.failed:
                    metrics.REAPED.inc(report.requeued)
                    log.warning(
                        "reaper: expired leases: requeued %d, cancelled %d, failed %d "
                        "(out of attempts)",
                        report.requeued,
                        report.cancelled,
                        len(report.failed),
                    )
                if recovered.republished or recovered.cancelled:
                    metrics.RECOVERED.inc(len(recovered.republished))
                    log.warning(
                        "recovery: republished %d waiting request(s) whose message had gone "
                        "missing (%s); ended %d waiting request(s) with a pending cancel",
                        len(recovered.republished),
                        ", ".join(map(str, recovered.republished[:5])),
                        recovered.cancelled,
                    )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.worker.reap_interval_seconds):
                    await self.stopping.wait()

    async def _health_loop(self, db: store.Store, connection: AbstractRobustConnection) -> None:
        """Keep ``health`` and the ``bgworker_dependency_up`` gauge true to the connections."""
        while not self.stopping.is_set():
            try:
                async with asyncio.timeout(2):
                    await db.pool.fetchval("SELECT 1")
                database = True
            except Exception:
                database = False
            self.health = {"database": database, "broker": not connection.is_closed}
            for name, up in self.health.items():
                metrics.DEPENDENCY_UP.labels(name).set(1 if up else 0)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(HEALTH_INTERVAL_SECONDS):
                    await self.stopping.wait()

    async def _watch_limits(self, channel: AbstractChannel) -> None:
        deadline = (time.monotonic() + self.limits.max_seconds) if self.limits.max_seconds else None
        while not self.stopping.is_set():
            if deadline and time.monotonic() >= deadline:
                log.info("batch mode: --max-seconds reached")
                self.stop()
                return
            if self.limits.burst and self.intake is not None and not self.intake.busy:
                if not await broker.queue_depth(channel, self.topology.work_queue):
                    log.info("batch mode: queue empty, exiting (--burst)")
                    self.stop()
                    return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await self.stopping.wait()
