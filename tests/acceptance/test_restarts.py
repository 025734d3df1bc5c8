"""RabbitMQ and PostgreSQL restarted mid-run: nothing lost, nothing duplicated.

These restart the machine's shared services, so they are marked ``faults`` and run in their
own CI stage (`make test-faults`), never next to another test run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.cli.smtp_sink import SmtpSink
from bgworker.contract import events
from bgworker.messaging import broker, publisher, topology
from tests.acceptance.workers import WorkerProcs, make_requests, verify_all_ready
from tests.helpers import AMQP_URL, settings_env, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.slow]

REQUESTS = 120


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=180)


async def restart_rabbitmq(down_seconds: float) -> None:
    await asyncio.to_thread(_run, "rabbitmqctl", "stop_app")
    await asyncio.sleep(down_seconds)  # the outage itself, not a wait for a condition
    await asyncio.to_thread(_run, "rabbitmqctl", "start_app")
    await asyncio.to_thread(_run, "rabbitmqctl", "await_startup")


async def restart_postgres(down_seconds: float) -> None:
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    ctl = ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main"]
    await asyncio.to_thread(_run, *ctl, "stop", "--mode=fast")
    await asyncio.sleep(down_seconds)
    await asyncio.to_thread(_run, *ctl, "start")

    def ready() -> bool:
        return subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1"], timeout=10).returncode == 0

    await wait_until(lambda: asyncio.to_thread(ready), timeout=60)


async def _publish_with_retry(pub: publisher.Publisher, event: events.FileRequested) -> int:
    """A producer's duty: publish until confirmed. Returns how many tries failed."""
    failures = 0
    while True:
        try:
            await pub.publish(event)
            return failures
        except (broker.PublishError, aio_pika.exceptions.AMQPError, ConnectionError, RuntimeError):
            failures += 1
            await asyncio.sleep(0.5)


async def _count_ready(db: store.Store) -> int:
    try:
        return (await db.maintenance.count_by_status()).get("ready", 0)
    except store.TRANSIENT_ERRORS:
        return -1  # PostgreSQL is restarting; ask again


async def _run_through_outage(
    settings: settings_mod.Settings,
    db: store.Store,
    smtp_sink: SmtpSink,
    tmp_path: Path,
    outage: Callable[[], Coroutine[Any, Any, None]],
    max_event_copies: int,
) -> None:
    ns = settings.namespace
    connection = await aio_pika.connect_robust(AMQP_URL)
    channel = await connection.channel()
    # Durable, not exclusive: it must keep FileReady messages across the broker restart.
    events_queue = await channel.declare_queue(f"{ns}.restart-events", durable=True)
    await events_queue.bind(topology.Topology(ns).events_exchange, "file.ready")
    procs = WorkerProcs(settings_env(settings), tmp_path)
    procs.start()
    procs.start()
    # ~100 ms of CPU each: the run lasts long enough for the outage to land in its middle.
    requests = make_requests(REQUESTS, rows=15000)
    publish_failures = 0
    try:
        async with publisher.Publisher(AMQP_URL, namespace=ns) as pub:
            for event in requests[: REQUESTS // 2]:
                publish_failures += await _publish_with_retry(pub, event)
            await wait_until(lambda: _count_ready_at_least(db, 5), timeout=60)
            outage_task = asyncio.create_task(outage())
            for event in requests[REQUESTS // 2 :]:
                publish_failures += await _publish_with_retry(pub, event)
            await outage_task
        ready_after_outage = await _count_ready(db)
        # The outage must have hit a run in progress, or this test would prove nothing.
        assert 0 <= ready_after_outage < REQUESTS, ready_after_outage

        async def all_ready() -> bool:
            return await _count_ready(db) == REQUESTS

        await wait_until(all_ready, timeout=240)
        await smtp_sink.wait_for(REQUESTS, timeout=180)
        ready_ids: Counter[str] = Counter()

        async def drain_events() -> bool:
            try:
                while (message := await events_queue.get(fail=False)) is not None:
                    await message.ack()
                    ready_ids[message.message_id or ""] += 1  # counted once acked
            except (aio_pika.exceptions.AMQPError, RuntimeError):
                # The test's own channel may still be reconnecting after the restart
                # (aiormq raises ChannelInvalidStateError, a RuntimeError); a message whose
                # ack failed is redelivered and counted then.
                return False
            return len(ready_ids) == REQUESTS

        await wait_until(drain_events, timeout=120)
    except TimeoutError:
        pytest.fail(f"run did not settle: {await db.maintenance.count_by_status()}\n{procs.logs()}")
    finally:
        codes = procs.stop_all()
        with contextlib.suppress(Exception):
            await events_queue.delete(if_unused=False, if_empty=False)
        await connection.close()

    report = await verify_all_ready(db, settings.storage_dir, requests)
    emails = Counter(m["To"] for m in smtp_sink.messages)
    extra_emails = sum(emails.values()) - len(emails)
    extra_events = sum(ready_ids.values()) - len(ready_ids)
    print(
        f"\n{outage.__name__}: {REQUESTS} requests, {ready_after_outage} ready when the service "
        f"was back, publish retries {publish_failures}, "
        f"{report}, emails {sum(emails.values())} ({extra_emails} copies), "
        f"FileReady {sum(ready_ids.values())} ({extra_events} copies), worker exits {codes}"
    )
    assert set(emails) == {f"user{i}@example.com" for i in range(REQUESTS)}
    assert set(ready_ids) == {f"{e.id}.file.ready" for e in requests}
    # An outage is not a crash: a sent email whose record failed is recorded once the
    # database is back, never sent again.
    assert extra_emails == 0
    # A FileReady published just as the broker went down may have been stored while its
    # confirm was lost: that one is published again (same message id).
    assert extra_events <= max_event_copies
    assert codes == [0, 0]


async def _count_ready_at_least(db: store.Store, n: int) -> bool:
    return await _count_ready(db) >= n


async def test_rabbitmq_restart_mid_run(
    settings: settings_mod.Settings,
    db: store.Store,
    amqp: aio_pika.abc.AbstractChannel,
    smtp_sink: SmtpSink,
    tmp_path: Path,
) -> None:
    async def rabbitmq_restart() -> None:
        await restart_rabbitmq(down_seconds=3)

    await _run_through_outage(
        settings,
        db,
        smtp_sink,
        tmp_path,
        rabbitmq_restart,
        max_event_copies=2 * settings.worker.concurrency,
    )


async def test_postgres_restart_mid_run(
    settings: settings_mod.Settings,
    db: store.Store,
    amqp: aio_pika.abc.AbstractChannel,
    smtp_sink: SmtpSink,
    tmp_path: Path,
) -> None:
    async def postgres_restart() -> None:
        await restart_postgres(down_seconds=3)

    await _run_through_outage(
        settings, db, smtp_sink, tmp_path, postgres_restart, max_event_copies=0
    )


def _set_consumer_timeout(ms: int, tick_ms: int) -> None:
    # Broker-wide settings (the per-queue x-consumer-timeout argument needs RabbitMQ 3.12+).
    # The timeout is checked on the channel tick (60 s by default): shorten it so the check
    # happens within the test; channels opened afterwards pick it up.
    _run("rabbitmqctl", "eval", f"application:set_env(rabbit, consumer_timeout, {ms}).")
    _run("rabbitmqctl", "eval", f"application:set_env(rabbit, channel_tick_interval, {tick_ms}).")


async def _assert_broker_enforces_timeout(namespace: str) -> None:
    """Control: a consumer that holds a delivery unacked has its channel closed."""
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(f"{namespace}.control", auto_delete=True)
        await channel.default_exchange.publish(aio_pika.Message(b"x"), queue.name)
        held: list[aio_pika.abc.AbstractIncomingMessage] = []

        async def hold(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            held.append(message)  # never acked

        await queue.consume(hold)
        await wait_until(lambda: channel.is_closed, timeout=30)
        assert held, "the control consumer never got its message"
    finally:
        await connection.close()


async def test_job_longer_than_broker_consumer_timeout_completes_once(
    settings: settings_mod.Settings,
    db: store.Store,
    amqp: aio_pika.abc.AbstractChannel,
    smtp_sink: SmtpSink,
    tmp_path: Path,
) -> None:
    """RabbitMQ closes the channel of a consumer that holds a delivery unacked past
    consumer_timeout. bgworker acks once the claim is committed, so a job may run far longer:
    here a 3 s broker timeout, a 2 s lease, and an 8 s job."""
    settings.worker.lease_seconds = 2
    await asyncio.to_thread(_set_consumer_timeout, 3000, 1000)
    procs = WorkerProcs(settings_env(settings), tmp_path)
    try:
        await _assert_broker_enforces_timeout(settings.namespace)
        procs.start()
        procs.start()
        async with publisher.Publisher(AMQP_URL, namespace=settings.namespace) as pub:
            event = events.FileRequested(
                id=uuid.uuid4(),
                file_type="slow",
                criteria={"seconds": 8},
                filename="slow.txt",
                requester={"email": "slow@example.com"},
            )
            await pub.publish(event)
        row = None

        async def ready() -> bool:
            nonlocal row
            row = await db.requests.get_request(event.id)
            return row is not None and row.status == "ready"

        await wait_until(ready, timeout=60)
        await smtp_sink.wait_for(1, timeout=30)
    finally:
        await asyncio.to_thread(_set_consumer_timeout, 1800000, 60000)
        codes = procs.stop_all()
    assert row is not None and row.attempts == 1
    assert [a["outcome"] for a in await db.requests.list_attempts(event.id)] == ["ready"]
    assert len(smtp_sink.messages) == 1
    assert codes == [0, 0]
    # The channel stayed open: no worker logged a consumer-timeout channel closure.
    assert "PRECONDITION_FAILED" not in procs.logs()
