"""Fixtures over the machine's real RabbitMQ, PostgreSQL and an aiosmtpd SMTP server.

Isolation: each test gets its own database (cloned from a migrated template made once per
session) and its own RabbitMQ namespace (uuid-named exchanges and queues, deleted after),
so two test runs can share the services at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import pytest
from aiohttp import web

from bgworker import broker, events, handlers, publisher, store, topology, wire, worker
from bgworker import settings as settings_mod
from bgworker import web as web_app
from bgworker.smtp_sink import SmtpSink
from bgworker.store import migrations
from bgworker.web import access_log

AMQP_URL = os.environ.get("BGWORKER_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
PG_ADMIN = os.environ.get("BGWORKER_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REPO = Path(__file__).resolve().parent.parent


def _db_url(name: str) -> str:
    return PG_ADMIN.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A migrated database used as TEMPLATE for each test's own database."""
    name = f"bgw_tmpl_{uuid.uuid4().hex[:10]}"

    async def create() -> None:
        await create_database(name)
        conn = await asyncpg.connect(_db_url(name))
        try:
            await migrations.apply(conn)
        finally:
            await conn.close()

    asyncio.run(create())
    yield name
    asyncio.run(_drop_database(name))


async def create_database(name: str, template: str | None = None) -> None:
    admin = await asyncpg.connect(PG_ADMIN)
    try:
        clause = f' TEMPLATE "{template}"' if template else ""
        await admin.execute(f'CREATE DATABASE "{name}"{clause}')
    finally:
        await admin.close()


async def _drop_database(name: str) -> None:
    admin = await asyncpg.connect(PG_ADMIN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def database_url(pg_template: str) -> AsyncIterator[str]:
    name = f"bgw_t_{uuid.uuid4().hex[:12]}"
    await create_database(name, template=pg_template)
    yield _db_url(name)
    await _drop_database(name)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[store.Store]:
    pool = await store.create_pool(database_url)
    yield store.Store(pool)
    await pool.close()


@pytest.fixture
async def smtp_sink() -> AsyncIterator[SmtpSink]:
    async with SmtpSink() as sink:
        yield sink


@pytest.fixture
def namespace() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def queue_type() -> str:
    """The work queue's type; a test parametrizes it to run on both."""
    return "quorum"


@pytest.fixture
def settings(
    database_url: str, namespace: str, tmp_path: Path, smtp_sink: SmtpSink, queue_type: str
) -> settings_mod.Settings:
    """Fast settings for tests: short leases, sub-second retry tiers."""
    return settings_mod.Settings(
        amqp_url=AMQP_URL,
        database_url=database_url,
        namespace=namespace,
        queue_type=queue_type,
        storage_dir=tmp_path / "files",
        handlers=["bgworker.examples:registry", "tests.handlers:registry"],
        smtp=settings_mod.SmtpSettings(port=smtp_sink.port, timeout_seconds=5),
        worker=settings_mod.WorkerSettings(
            concurrency=4,
            lease_seconds=5,
            reap_interval_seconds=1,
            retry_delays_seconds=[0.2, 0.4, 0.8],
            max_attempts=4,
            outbox_interval_seconds=0.5,
            outbox_retry_seconds=[0.3, 0.6, 1.0],
            outbox_claim_seconds=12,
            drain_timeout_seconds=10,
        ),
        tokens=settings_mod.TokenSettings(secret_keys=[secrets.token_urlsafe(16)]),
        web=settings_mod.WebSettings(public_url="http://127.0.0.1:1"),
    )


def settings_env(settings: settings_mod.Settings) -> dict[str, str]:
    """The same settings as BGWORKER_* variables, for subprocesses (CLI)."""
    w = settings.worker
    env = {
        "BGWORKER_AMQP_URL": settings.amqp_url.get_secret_value(),
        "BGWORKER_DATABASE_URL": settings.database_url.get_secret_value(),
        "BGWORKER_NAMESPACE": settings.namespace,
        "BGWORKER_QUEUE_TYPE": settings.queue_type,
        "BGWORKER_STORAGE_DIR": str(settings.storage_dir),
        "BGWORKER_HANDLERS": ",".join(settings.handlers),
        "BGWORKER_SMTP__PORT": str(settings.smtp.port),
        "BGWORKER_TOKENS__SECRET_KEYS": ",".join(
            k.get_secret_value() for k in settings.tokens.secret_keys
        ),
        "BGWORKER_WEB__PUBLIC_URL": settings.web.public_url,
        "BGWORKER_WORKER__LEASE_SECONDS": str(w.lease_seconds),
        "BGWORKER_WORKER__REAP_INTERVAL_SECONDS": str(w.reap_interval_seconds),
        "BGWORKER_WORKER__RETRY_DELAYS_SECONDS": ",".join(map(str, w.retry_delays_seconds)),
        "BGWORKER_WORKER__OUTBOX_INTERVAL_SECONDS": str(w.outbox_interval_seconds),
        "BGWORKER_WORKER__OUTBOX_RETRY_SECONDS": ",".join(map(str, w.outbox_retry_seconds)),
        "BGWORKER_WORKER__DRAIN_TIMEOUT_SECONDS": str(w.drain_timeout_seconds),
        "BGWORKER_WORKER__OUTBOX_CLAIM_SECONDS": str(w.outbox_claim_seconds),
        "BGWORKER_WORKER__CONCURRENCY": str(w.concurrency),
    }
    base = {k: v for k, v in os.environ.items() if not k.startswith("BGWORKER_")}
    return {**base, **env, "PYTHONPATH": str(REPO)}


@pytest.fixture
async def amqp(settings: settings_mod.Settings) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    """A channel on the test's namespace; the topology is declared, then deleted after."""
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel()
    topo = topology.Topology(
        settings.namespace, tuple(settings.worker.retry_delays_seconds), settings.queue_type
    )
    await topo.declare(channel)
    yield channel
    with contextlib.suppress(Exception):
        cleanup = await connection.channel()
        await topo.delete(cleanup)
    await connection.close()


@pytest.fixture
async def publish(
    settings: settings_mod.Settings, amqp: aio_pika.abc.AbstractChannel
) -> AsyncIterator[Callable[..., Awaitable[events.FileRequested]]]:
    """publish(file_type, criteria=..., **fields) -> the event, confirmed by the broker."""
    async with publisher.Publisher(
        AMQP_URL, namespace=settings.namespace, queue_type=settings.queue_type
    ) as pub:

        async def _publish(
            file_type: str, criteria: dict[str, Any] | None = None, **fields: Any
        ) -> events.FileRequested:
            event = events.FileRequested(
                id=fields.pop("id", uuid.uuid4()),
                file_type=file_type,
                criteria=criteria or {},
                filename=fields.pop("filename", f"{file_type}.bin"),
                **fields,
            )
            await pub.publish(event)
            return event

        yield _publish


@pytest.fixture
async def publish_raw(
    settings: settings_mod.Settings, amqp: aio_pika.abc.AbstractChannel
) -> AsyncIterator[Callable[[bytes], Awaitable[None]]]:
    """Publish arbitrary bytes to the requests exchange (bad events)."""
    connection = await aio_pika.connect(AMQP_URL)
    confirm = await broker.open_channel(connection)  # type: ignore[arg-type]
    topo = topology.Topology(settings.namespace)

    async def _publish(body: bytes) -> None:
        await broker.publish(
            confirm,
            topo.requests_exchange,
            topology.REQUESTED_KEY,
            wire.request(body, "raw"),
        )

    yield _publish
    await connection.close()


@pytest.fixture
async def start_worker(
    settings: settings_mod.Settings, amqp: aio_pika.abc.AbstractChannel
) -> AsyncIterator[Callable[..., Awaitable[worker.Worker]]]:
    """Start in-process workers; all are stopped (drained) at teardown."""
    started: list[tuple[worker.Worker, asyncio.Task[Any]]] = []

    async def _start(**overrides: Any) -> worker.Worker:
        registry = handlers.load(settings.handlers)
        w = worker.Worker(settings, registry, **overrides)
        task = asyncio.create_task(w.run(), name=f"test-worker-{len(started)}")
        started.append((w, task))
        ready = asyncio.create_task(w.ready.wait())
        done, _ = await asyncio.wait([ready, task], timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()  # raises the startup error
        assert ready in done, "worker did not start consuming within 30s"
        return w

    yield _start
    for w, _ in started:
        w.stop()
    for _, task in started:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 30)


@pytest.fixture
async def event_log(
    settings: settings_mod.Settings, amqp: aio_pika.abc.AbstractChannel
) -> AsyncIterator[list[tuple[str, dict[str, Any]]]]:
    """Every FileReady/FileFailed published on the test's events exchange, as (key, body)."""
    seen: list[tuple[str, dict[str, Any]]] = []
    topo = topology.Topology(settings.namespace)
    queue = await amqp.declare_queue(f"{settings.namespace}.test-events", exclusive=True)
    await queue.bind(topo.events_exchange, "#")

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        seen.append((message.routing_key or "", json.loads(message.body)))
        await message.ack()

    tag = await queue.consume(on_message)
    yield seen
    with contextlib.suppress(Exception):
        await queue.cancel(tag)


@pytest.fixture
async def start_server(
    settings: settings_mod.Settings,
) -> AsyncIterator[Callable[..., Awaitable[str]]]:
    """start_server(**create_app kwargs) -> base URL of ``create_app(settings)`` served on a
    free port over a real socket, with the production access logger. Settings are read when
    it starts (set ``settings.web.identity_header`` first). Stopped at teardown."""
    runners: list[web.AppRunner] = []

    async def _start(**kwargs: Any) -> str:
        runner = web.AppRunner(
            web_app.create_app(settings, **kwargs),
            access_log_class=access_log.RedactingAccessLogger,
        )
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"

    yield _start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def server(start_server: Callable[..., Awaitable[str]]) -> str:
    """Base URL of the download server with default settings."""
    return await start_server()


async def wait_for_status(
    db: store.Store, request_id: uuid.UUID, statuses: set[str] | str, timeout: float = 30
) -> store.RequestRow:
    """Poll the row until it reaches one of ``statuses`` (waits on an event, not a sleep)."""
    wanted = {statuses} if isinstance(statuses, str) else statuses
    async with asyncio.timeout(timeout):
        while True:
            row = await db.get_request(request_id)
            if row is not None and row.status in wanted:
                return row
            await asyncio.sleep(0.05)


async def wait_until(predicate: Callable[[], Any], timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while True:
            result = predicate()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return
            await asyncio.sleep(0.05)
