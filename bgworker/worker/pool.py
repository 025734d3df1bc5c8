"""The consumer pool: run, stop, drain.

A worker consumes the work queue only while it has a free slot (see ``intake``) and runs
each delivery as a named task (see ``jobs``). Side tasks: the intake (reopens the consumer
when a slot frees), the reaper (requeues requests whose worker died), the outbox
dispatcher (emails, events) and the schedules (publishes their periods). The first stop
request cancels the consumer and drains running jobs up to ``drain_timeout_seconds``, then
releases what is left back to the queue; the CLI turns a second signal into an exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, TypeVar

from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

from bgworker import faults, handlers, storage, store
from bgworker import settings as settings_mod
from bgworker.contract import states
from bgworker.effects import mail, outbox
from bgworker.links import tokens
from bgworker.messaging import broker, declaring, topology
from bgworker.observe import logs, tracing
from bgworker.worker import (
    announce,
    cancels,
    health,
    intake,
    jobs,
    loopwatch,
    parking,
    reaper,
    sampler,
    schedules,
    settling,
    tasks,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


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
        # Keyed by states.JobOutcome members, which are their strings (w.outcomes["ready"]).
        self.outcomes: Counter[str] = Counter()
        self.ready = asyncio.Event()  # set once consuming: tests and health checks wait on it
        self.intake: intake.Intake | None = None  # set once consuming
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = time.monotonic()
        self.health: dict[str, bool] = {}  # see health.Health
        self.crashed = False  # a side task died: the CLI exits non-zero
        self.metrics_url: str | None = None  # set once serving BGWORKER_METRICS__PORT

    def stop(self) -> None:
        self.stopping.set()

    async def run(self) -> Counter[str]:
        """Open the resources, consume until stopped, then drain and close in reverse."""
        # No keys: fail before connecting. Links nobody could use: say so at start.
        signer = tokens.Signer(self.settings.tokens, bind=tokens.binds_requester(self.settings))
        tokens.warn_unusable_links(self.settings, identity_callable=False)
        if self.settings.tracing.enabled:
            tracing.enable()
        # A lost connection is one WARNING and its return one INFO (bgworker.connections),
        # never the client libraries' tracebacks: see logs.Outage and faults.report.
        logs.quiet_libraries()
        logs.locate(logs.POSTGRESQL, self.settings.database_url.get_secret_value())
        logs.locate(logs.RABBITMQ, self.settings.amqp_url.get_secret_value())
        async with AsyncExitStack() as stack:
            files = await self._ride_out(
                lambda: stack.enter_async_context(storage.opened(self.settings)), "storage"
            )
            # Made first and given to both store and dispatcher: see outbox.Handoff.
            handoff = outbox.Handoff()
            db = await self._open_store(stack, handoff)
            connection = await self._connect(stack)
            channel = await broker.open_channel(connection)
            # On the robust channel, restored after a reconnect (to whichever node): the
            # exchanges and the work queue with its consumer. The other queues beside it,
            # so that a queue a surviving node cannot serve never blocks it (``declaring``).
            await self.topology.declare_exchanges(channel)
            queue = await self.topology.declare_work(channel)
            declarations = declaring.Declarations(connection, self.topology, work_queue=False)
            await declarations.start()
            stack.push_async_callback(declarations.close)
            dispatcher = await self._make_dispatcher(stack, db, handoff, connection, signer)
            # The registries' lifespans: opened once before the first job, closed by the
            # exit stack after the drain (it unwinds in reverse, before the pool).
            try:
                resources = await stack.enter_async_context(self.registry.resources(self.settings))
            except Exception as exc:
                raise handlers.LifespanError(
                    f"a handler lifespan failed to open: {type(exc).__name__}: {exc}"
                ) from exc
            # Renewing leases from its own thread until the exit stack closes it, after the
            # drain (jobs that release their requests then still hold their leases).
            leases = await stack.enter_async_context(
                store.LeaseKeeper(
                    self.settings.database_url.get_secret_value(),
                    self.worker_id,
                    self.settings.worker.lease_seconds,
                    pooler=self.settings.database_pooler,
                )
            )
            runner = self._make_runner(db, files, channel, resources, leases)
            consuming = await self._consume(queue, runner)
            side = await self._start_side_tasks(
                db, connection, channel, dispatcher, runner, consuming
            )
            metered, self.metrics_url = await sampler.start(
                stack,
                self.settings.metrics,
                db,
                connection,
                self.topology,
                self.stopping,
                self.health,
            )
            side.append(metered)
            announce.started(self.worker_id, self.topology, self.settings, self.registry)
            self.ready.set()
            await self._wait_until_stopped(side)
            await self._shutdown(consuming, runner, dispatcher, side)
        announce.stopped(self.worker_id, self._started, self.outcomes, consuming)
        return self.outcomes

    async def _open_store(self, stack: AsyncExitStack, handoff: outbox.Handoff) -> store.Store:
        cfg = self.settings.worker
        dsn = self.settings.database_url.get_secret_value()
        pool = await self._ride_out(
            lambda: store.create_pool(
                dsn, max_size=cfg.concurrency + 4, pooler=self.settings.database_pooler
            ),
            f"PostgreSQL at {logs.address(dsn)}",
        )
        stack.push_async_callback(pool.close)
        # Outbox rows this worker writes start claimed by it and go straight to its
        # dispatcher after their commit; the sweep covers the rest.
        return store.Store(
            pool, claim_effects_seconds=cfg.outbox_claim_seconds, on_effects=handoff.put
        )

    async def _ride_out(self, connect: Callable[[], Awaitable[T]], service: str) -> T:
        """A connection at start, waiting out a service that is restarting (the CLI's probe
        waited for it a moment ago; it may have gone again)."""
        return await faults.ride_out(
            connect, service=service, seconds=self.settings.startup_retry_seconds
        )

    async def _connect(self, stack: AsyncExitStack) -> AbstractRobustConnection:
        url = self.settings.amqp_url.get_secret_value()
        connection = await self._ride_out(
            lambda: broker.connect(
                url, name=f"bgworker-worker {self.worker_id}", outage=logs.OUTAGES[logs.RABBITMQ]
            ),
            f"RabbitMQ at {logs.address(url)}",
        )
        stack.push_async_callback(connection.close)
        return connection

    async def _make_dispatcher(
        self,
        stack: AsyncExitStack,
        db: store.Store,
        handoff: outbox.Handoff,
        connection: AbstractRobustConnection,
        signer: tokens.Signer,
    ) -> outbox.Dispatcher:
        mailer = mail.Mailer(self.settings.smtp, template_dir=self.settings.template_dir)
        # Closed by the dispatcher after the drain; this for a run that fails before it.
        stack.push_async_callback(mailer.close)
        return outbox.Dispatcher(
            db=db,
            handoff=handoff,
            mailer=mailer,
            signer=signer,
            # Effects get their own channel so a slow consumer channel never delays them.
            channel=await broker.open_channel(connection),
            topology=self.topology,
            public_url=self.settings.web.public_url,
            config=self.settings.worker,
            webhook_config=self.settings.webhooks,
        )

    def _make_runner(
        self,
        db: store.Store,
        files: storage.Storage,
        channel: AbstractChannel,
        resources: Mapping[str, Any],
        leases: store.LeaseKeeper,
    ) -> jobs.Runner:
        return jobs.Runner(
            settings=self.settings,
            leases=leases,
            resources=resources,
            registry=self.registry,
            db=db,
            files=files,
            channel=channel,
            topology=self.topology,
            worker_id=self.worker_id,
        )

    async def _consume(self, queue: AbstractQueue, runner: jobs.Runner) -> intake.Intake:
        """Start consuming: the intake takes deliveries into free slots only."""

        async def start_job(message: AbstractIncomingMessage) -> None:
            hold = self.settings.worker.hold_timeout_seconds
            job = settling.handle_until_settled(
                message, runner, hold_seconds=hold, stopping=self.stopping
            )
            self._start(job, f"job-{message.message_id}")

        slots = intake.slots_for(self.settings.worker, self.registry)  # flow control: intake
        limit = self.limits.max_jobs
        await runner.channel.set_qos(prefetch_count=intake.prefetch_for(slots, limit))
        consuming = intake.Intake(
            queue, start_job, slots=slots, limit=limit, stopping=self.stopping
        )
        runner.acks = consuming.acks  # the intake sees every delivery: see acking
        self.intake = consuming
        await consuming.sync()  # consuming from here on
        return consuming

    async def _start_side_tasks(
        self,
        db: store.Store,
        connection: AbstractRobustConnection,
        channel: AbstractChannel,
        dispatcher: outbox.Dispatcher,
        runner: jobs.Runner,
        consuming: intake.Intake,
    ) -> list[asyncio.Task[None]]:
        cfg = self.settings.worker
        reaping = reaper.Reaper(
            db=db,
            channel=channel,
            topology=self.topology,
            worker_id=self.worker_id,
            config=cfg,
            webhooks=self.settings.webhooks,
            fair=runner.fair,
        )
        watching = health.Health(db=db, connection=connection, status=self.health)
        side = [
            await cancels.start(db, connection, self.topology, self.stopping),
            await parking.start(
                connection, runner, self.outcomes, self.stopping, consuming, self._start
            ),
            asyncio.create_task(consuming.run(), name="intake"),
            asyncio.create_task(dispatcher.run(self.stopping), name="outbox-dispatcher"),
            asyncio.create_task(reaping.run(self.stopping), name="lease-reaper"),
            asyncio.create_task(watching.run(self.stopping), name="health"),
            schedules.start(db, channel, self.topology, self.worker_id, cfg, self.stopping),
        ]
        if cfg.loop_block_warning_seconds > 0:
            watch = loopwatch.LoopWatch(cfg.loop_block_warning_seconds, runner.execution)
            side.append(asyncio.create_task(watch.run(self.stopping), name="loop-watchdog"))
        if self.limits.burst or self.limits.max_seconds:
            side.append(asyncio.create_task(self._watch_limits(channel), name="batch-limits"))
        return side

    async def _shutdown(
        self,
        consuming: intake.Intake,
        runner: jobs.Runner,
        dispatcher: outbox.Dispatcher,
        side: list[asyncio.Task[None]],
    ) -> None:
        """Cancel the consumer, drain the jobs (releasing what outlives the drain), finish
        the effects in hand, then end the side tasks; the exit stack closes the rest."""
        try:
            await consuming.close()
        except Exception as exc:  # channel gone: it took its consumer with it
            log.warning("cancelling the consumer: %s", logs.describe(exc))
        await self._drain(runner)
        # Jobs that finished during the drain handed their effects to the dispatcher: let
        # them complete before the pool and channel close, or their claims would run out
        # and another worker would repeat them.
        await dispatcher.close()
        await asyncio.wait(side, timeout=self.settings.worker.outbox_interval_seconds + 5)
        await tasks.cancel_all(side)

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

    def _start(self, job: Coroutine[Any, Any, states.JobOutcome], name: str) -> None:
        """Run a job in the slot taken for it (a delivery's, or fair share's), drained."""
        task = asyncio.create_task(self._process(job), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _process(self, job: Coroutine[Any, Any, states.JobOutcome]) -> None:
        """The intake admitted this job into a free slot: run it, free the slot."""
        assert self.intake is not None
        outcome = states.JobOutcome.ERROR
        try:
            outcome = await job
        finally:
            # A duplicate ran nothing: it does not count towards --max-jobs.
            self.intake.release(counted=outcome not in states.NOT_A_RUN)
        self.outcomes[outcome] += 1
        if self.limits.max_jobs and self._finished_jobs() >= self.limits.max_jobs:
            self.stop()

    def _finished_jobs(self) -> int:
        return sum(n for k, n in self.outcomes.items() if k not in states.NOT_A_RUN)

    async def _drain(self, runner: jobs.Runner) -> None:
        if not self._tasks:
            return
        grace = self.settings.worker.drain_timeout_seconds
        log.info("draining %d job(s), up to %.0fs", len(self._tasks), grace)
        _, pending = await asyncio.wait(list(self._tasks), timeout=grace)
        if pending:
            log.warning("drain timeout: releasing %d job(s) back to the queue", len(pending))
            runner.releasing = True
            await tasks.cancel_all(list(pending))

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
