"""Fixtures over the machine's real RabbitMQ, PostgreSQL and an aiosmtpd SMTP server.

Isolation: each test gets its own database (cloned from a migrated template made once per
session) and its own RabbitMQ namespace (uuid-named exchanges and queues, deleted after),
so two test runs can share the services at once. Only fixtures live here; what tests
import (service URLs, waits, fixture types) is in tests/helpers.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import pytest
from aiohttp import web
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from bgworker import broker, events, handlers, publisher, storage, store, topology, wire, worker
from bgworker import settings as settings_mod
from bgworker import web as web_app
from bgworker.smtp_sink import SmtpSink
from bgworker.storage import s3 as s3_backend
from bgworker.store import migrations
from bgworker.web import access_log
from tests import helpers, s3

# Property tests run on two shared cores next to RabbitMQ and PostgreSQL: a slow example is
# the machine's load, not a finding. No per-example deadline, and no "too slow" health check.
hypothesis_settings.register_profile(
    "bgworker", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
hypothesis_settings.load_profile("bgworker")


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A migrated database used as TEMPLATE for each test's own database."""
    name = f"bgw_tmpl_{uuid.uuid4().hex[:10]}"

    async def create() -> None:
        await helpers.create_database(name)
        conn = await asyncpg.connect(helpers.db_url(name))
        try:
            await migrations.apply(conn)
        finally:
            await conn.close()

    asyncio.run(create())
    yield name
    asyncio.run(helpers.drop_database(name))


@pytest.fixture
async def database_url(pg_template: str) -> AsyncIterator[str]:
    name = f"bgw_t_{uuid.uuid4().hex[:12]}"
    await helpers.create_database(name, template=pg_template)
    yield helpers.db_url(name)
    await helpers.drop_database(name)


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


@pytest.fixture(scope="session")
def s3_server() -> Iterator[s3.S3Server]:
    """moto's S3 server, one process for the session; each test has its own bucket."""
    with s3.moto() as server:
        yield server


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test marked ``both_storages`` (or in a module so marked) runs twice, as
    ``[local]`` and ``[s3]`` (moto, its own bucket): ``storage_backend`` below gets each."""
    if metafunc.definition.get_closest_marker("both_storages") is None:
        return
    if "storage_backend" in metafunc.fixturenames:
        metafunc.parametrize("storage_backend", ["local", "s3"], indirect=True)


@pytest.fixture
def storage_backend(request: pytest.FixtureRequest) -> str:
    """Where the test's files live: local, unless the test is marked ``both_storages``
    (then each backend in turn). S3-only modules override it with one returning "s3"."""
    backend: str = getattr(request, "param", "local")
    return backend


@pytest.fixture
async def storage_settings(
    storage_backend: str, request: pytest.FixtureRequest
) -> settings_mod.StorageSettings:
    if storage_backend == "local":
        return settings_mod.StorageSettings()
    server: s3.S3Server = request.getfixturevalue("s3_server")
    return s3.storage_settings(server, await s3.new_bucket(server))


@pytest.fixture
async def s3_files(settings: settings_mod.Settings) -> AsyncIterator[s3_backend.S3Storage]:
    """The test's S3 storage, open (in modules whose ``storage_backend`` is "s3")."""
    async with storage.opened(settings) as opened:
        assert isinstance(opened, s3_backend.S3Storage), "storage_backend is not s3"
        yield opened


@pytest.fixture
def settings(
    database_url: str,
    namespace: str,
    tmp_path: Path,
    smtp_sink: SmtpSink,
    queue_type: str,
    storage_settings: settings_mod.StorageSettings,
) -> settings_mod.Settings:
    """Fast settings for tests: short leases, sub-second retry tiers."""
    return settings_mod.Settings(
        amqp_url=helpers.AMQP_URL,
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
        storage=storage_settings,
    )


@pytest.fixture
async def amqp(settings: settings_mod.Settings) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    """A channel on the test's namespace; the topology is declared, then deleted after."""
    connection = await aio_pika.connect(helpers.AMQP_URL)
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
) -> AsyncIterator[helpers.Publish]:
    """publish(file_type, criteria=..., **fields) -> the event, confirmed by the broker."""
    async with publisher.Publisher(
        helpers.AMQP_URL, namespace=settings.namespace, queue_type=settings.queue_type
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
) -> AsyncIterator[helpers.PublishRaw]:
    """Publish arbitrary bytes to the requests exchange (bad events), with a message id
    ("raw", or one the test gives)."""
    connection = await aio_pika.connect(helpers.AMQP_URL)
    confirm = await broker.open_channel(connection)  # type: ignore[arg-type]
    topo = topology.Topology(settings.namespace)

    async def _publish(body: bytes, message_id: str = "raw") -> None:
        await broker.publish(
            confirm,
            topo.requests_exchange,
            topology.REQUESTED_KEY,
            wire.request(body, message_id),
        )

    yield _publish
    await connection.close()


@pytest.fixture
async def start_worker(
    settings: settings_mod.Settings, amqp: aio_pika.abc.AbstractChannel
) -> AsyncIterator[helpers.StartWorker]:
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
) -> AsyncIterator[helpers.EventLog]:
    """Every FileReady/FileFailed published on the test's events exchange, as (key, body)."""
    seen: helpers.EventLog = []
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
def dead(amqp: aio_pika.abc.AbstractChannel, namespace: str) -> helpers.DeadLetters:
    """The test namespace's dead-letter queue, read as letters arrive."""
    return helpers.DeadLetters(amqp, namespace)


@pytest.fixture
async def start_server(
    settings: settings_mod.Settings,
) -> AsyncIterator[helpers.StartServer]:
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
async def server(start_server: helpers.StartServer) -> str:
    """Base URL of the download server with default settings."""
    return await start_server()
