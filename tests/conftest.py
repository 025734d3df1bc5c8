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
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Final

import aio_pika
import asyncpg
import pytest
from aiohttp import web
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from bgworker import handlers, storage, store, worker
from bgworker import settings as settings_mod
from bgworker import web as web_app
from bgworker.cli.smtp_sink import SmtpSink
from bgworker.contract import events
from bgworker.messaging import broker, publisher, topology, wire
from bgworker.storage import s3 as s3_backend
from bgworker.store import migrations
from bgworker.web import access_log
from tests import helpers, s3

# Property tests run on two shared cores next to RabbitMQ and PostgreSQL: a slow example is
# the machine's load, not a finding. No per-example deadline, and no "too slow" health check.
_SHARED: Final[dict[str, Any]] = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow],
    "print_blob": True,
}
# "ci", the default (make test, CI, a plain pytest): the same examples on every run and every
# machine, so a clean run cannot turn red by luck. derandomize draws each test's examples
# from a seed made of the test's own code; database=None because replaying failures saved
# in a local .hypothesis/ directory would make this checkout's run differ from a fresh
# clone's. Searching for new failures is `make fuzz`'s job. Derandomized rather than one
# fixed --hypothesis-seed: it needs no command-line option, so a plain `pytest tests/x.py`
# draws exactly what `make test` draws.
hypothesis_settings.register_profile("ci", derandomize=True, database=None, **_SHARED)
# "fuzz" (make fuzz): a random seed, printed in the header (replay with make fuzz SEED=N),
# FUZZ_FACTOR times the examples; a failure it finds is kept in .hypothesis/ and tried first
# by the next fuzz run here (never by ci). Turn what it finds into an @example.
hypothesis_settings.register_profile(
    "fuzz", max_examples=helpers.FUZZ_FACTOR * 100, derandomize=False, **_SHARED
)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_report_header(config: pytest.Config) -> str:
    profile = hypothesis_settings.get_current_profile_name()
    current = hypothesis_settings()  # the loaded profile's values
    if current.derandomize:
        how = "derandomized: each test's examples are fixed by its code"
    else:
        seed = config.getoption("hypothesis_seed", None)
        how = f"seed {seed}" if seed is not None else "a random seed per test"
    return (
        f"hypothesis profile {profile}: {how}, max_examples={current.max_examples}, "
        f"database={current.database}"
    )


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


# The namespaces this process's tests made, each with the test that made it: at the end of
# the run none of them may have a queue or exchange left on the broker (broker_left_clean).
_NAMESPACES: dict[str, str] = {}


# The settings made for each namespace: at its teardown they say which retry tiers the test
# ended up with (tests change settings.worker.retry_delays_seconds after the fixtures
# declared _TEST_RETRY_DELAYS').
_SETTINGS: dict[str, settings_mod.Settings] = {}
_TEST_RETRY_DELAYS: Final = (0.2, 0.4, 0.8)


@pytest.fixture
async def namespace(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """The test's own RabbitMQ namespace. Torn down after everything that used it (workers,
    subprocesses, channels), it removes the topology bgworker declares under it, whoever
    declared it and however the test ended; anything else a test declares, it removes
    itself (broker_left_clean checks)."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    _NAMESPACES[name] = request.node.nodeid
    yield name
    delays = {*topology.Topology(name).retry_delays_seconds, *_TEST_RETRY_DELAYS}
    if (made := _SETTINGS.pop(name, None)) is not None:
        delays |= {*made.worker.retry_delays_seconds}
    await helpers.delete_topology(topology.Topology(name, tuple(sorted(delays))))


@pytest.fixture(scope="session", autouse=True)
def broker_left_clean() -> Iterator[None]:
    """Fails the run (an error at the teardown of this process's last test) when a queue or
    exchange of a namespace one of this process's tests made is still on the shared broker,
    naming the tests; then deletes them. Each pytest-xdist worker checks the namespaces its
    own tests made, so another run on the same broker is never looked at or touched."""
    yield
    if not _NAMESPACES:
        return
    left = helpers.on_broker(_NAMESPACES)
    if left:
        # An exclusive or auto-delete queue goes when its connection has closed: the last
        # test's may still be closing. One more look, then whatever is there was left.
        time.sleep(2)
        left = helpers.on_broker(_NAMESPACES)
    if not left:
        return
    asyncio.run(helpers.delete_from_broker(left))
    by_test: dict[str, list[str]] = {}
    for kind, name in left:
        ns = next(ns for ns in _NAMESPACES if name.startswith((f"{ns}.", f"{ns}-")))
        by_test.setdefault(_NAMESPACES[ns], []).append(f"{kind} {name}")
    pytest.fail(
        f"{len(left)} queues and exchanges were left on RabbitMQ (now deleted):\n"
        + "\n".join(f"  {test}: {', '.join(names)}" for test, names in sorted(by_test.items())),
        pytrace=False,
    )


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
    made = _SETTINGS[namespace] = settings_mod.Settings(
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
            retry_delays_seconds=list(_TEST_RETRY_DELAYS),
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
    return made


@pytest.fixture
async def amqp(settings: settings_mod.Settings) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    """A channel on the test's namespace, its topology declared (``namespace`` deletes it)."""
    connection = await aio_pika.connect(helpers.AMQP_URL)
    channel = await connection.channel()
    topo = topology.Topology(
        settings.namespace, tuple(settings.worker.retry_delays_seconds), settings.queue_type
    )
    await topo.declare(channel)
    yield channel
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
def dead(
    amqp: aio_pika.abc.AbstractChannel, settings: settings_mod.Settings
) -> helpers.DeadLetters:
    """The test namespace's dead-letter queue, read as letters arrive."""
    return helpers.DeadLetters(amqp, settings.namespace, settings.queue_type)


@pytest.fixture
async def start_server(
    settings: settings_mod.Settings,
) -> AsyncIterator[helpers.StartServer]:
    """start_server(**create_app kwargs) -> base URL of ``create_app(settings)`` served on a
    free port over a real socket, with the production access logger. Settings are read when
    it starts (set ``settings.web.identity_header`` first). Stopped at teardown."""
    runners: list[web.AppRunner] = []

    async def _start(**kwargs: Any) -> str:
        runner = access_log.Runner(web_app.create_app(settings, **kwargs))
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
