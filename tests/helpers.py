"""What tests share besides fixtures: service URLs, database set-up, waiting on a condition,
reading a dead-letter queue, and the types of the factory fixtures in ``conftest.py``.

Tests import from here, never from ``conftest`` (pytest loads conftest itself; importing it
as a module runs it twice under two names).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, Final

import aio_pika
import asyncpg
import hypothesis
import pytest

from bgworker import settings as settings_mod
from bgworker import storage, store, worker
from bgworker.contract import events
from bgworker.messaging import broker, topology
from bgworker.store import requests as store_requests
from bgworker.worker import intake as worker_intake

AMQP_URL: Final = os.environ.get("BGWORKER_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
PG_ADMIN: Final = os.environ.get(
    "BGWORKER_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REPO: Final = Path(__file__).resolve().parent.parent
# How many times its usual examples a property test tries under `make fuzz` (the "fuzz"
# hypothesis profile of conftest.py).
FUZZ_FACTOR: Final = 10


def examples(n: int) -> int:
    """``max_examples`` for a property test that tries ``n`` in ``make test``: scaled by the
    loaded hypothesis profile (100 examples by default, FUZZ_FACTOR times that in fuzz), so
    ``make fuzz`` searches longer in the tests that set their own count too."""
    # settings() is the loaded profile's values.
    return n * hypothesis.settings().max_examples // 100


# The factory fixtures of conftest.py, as the tests that request them see them.
# publish(file_type, criteria=..., **FileRequested fields) -> the event, broker-confirmed
Publish = Callable[..., Awaitable[events.FileRequested]]
# publish_raw(body, message_id="raw") -> None: arbitrary bytes to the requests exchange
PublishRaw = Callable[..., Awaitable[None]]
# start_worker(**Worker keyword arguments) -> a worker that consumes
StartWorker = Callable[..., Awaitable[worker.Worker]]
# start_server(**create_app keyword arguments) -> the server's base URL
StartServer = Callable[..., Awaitable[str]]
# every FileReady/FileFailed on the test's events exchange, as (routing key, body)
EventLog = list[tuple[str, dict[str, Any]]]


def db_url(name: str) -> str:
    """The URL of database ``name`` on the test server."""
    return PG_ADMIN.rsplit("/", 1)[0] + "/" + name


async def create_database(name: str, template: str | None = None) -> None:
    admin = await asyncpg.connect(PG_ADMIN)
    try:
        clause = f' TEMPLATE "{template}"' if template else ""
        await admin.execute(f'CREATE DATABASE "{name}"{clause}')
    finally:
        await admin.close()


async def drop_database(name: str) -> None:
    admin = await asyncpg.connect(PG_ADMIN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def settings_env(settings: settings_mod.Settings) -> dict[str, str]:
    """The same settings as BGWORKER_* variables, for subprocesses (CLI)."""
    w = settings.worker
    env = {
        "BGWORKER_AMQP_URL": settings.amqp_url.get_secret_value(),
        "BGWORKER_DATABASE_URL": settings.database_url.get_secret_value(),
        "BGWORKER_DATABASE_POOLER": settings.database_pooler,
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
        "BGWORKER_FAIRNESS__TENANT_IN_FLIGHT": str(settings.fairness.tenant_in_flight),
        "BGWORKER_FAIRNESS__TENANT_LIMITS": json.dumps(settings.fairness.tenant_limits),
        "BGWORKER_FAIRNESS__FILE_TYPE_LIMITS": json.dumps(settings.fairness.file_type_limits),
        "BGWORKER_FAIRNESS__QUOTA_PER_HOUR": str(settings.fairness.quota_per_hour),
        "BGWORKER_FAIRNESS__QUOTA_PER_DAY": str(settings.fairness.quota_per_day),
        "BGWORKER_FAIRNESS__OVER_QUOTA": settings.fairness.over_quota,
        "BGWORKER_FAIRNESS__SHARE": str(settings.fairness.share).lower(),
        **_storage_env(settings.storage),
    }
    base = {k: v for k, v in os.environ.items() if not k.startswith("BGWORKER_")}
    return {**base, **env, "PYTHONPATH": str(REPO)}


def _storage_env(config: settings_mod.StorageSettings) -> dict[str, str]:
    env: dict[str, str] = {"BGWORKER_STORAGE__BACKEND": config.backend}
    for name in ("s3_bucket", "s3_endpoint_url", "s3_region", "s3_access_key_id", "s3_prefix"):
        value = getattr(config, name)
        if value is not None:
            env[f"BGWORKER_STORAGE__{name.upper()}"] = str(value)
    if config.s3_secret_access_key is not None:
        secret = config.s3_secret_access_key.get_secret_value()
        env["BGWORKER_STORAGE__S3_SECRET_ACCESS_KEY"] = secret
    env["BGWORKER_STORAGE__S3_PART_SIZE_BYTES"] = str(config.s3_part_size_bytes)
    return env


async def stored_bytes(settings: settings_mod.Settings, row: store.RequestRow) -> bytes:
    """The stored file of a row that has one, from whichever backend holds it."""
    assert row.storage_key is not None, f"request {row.id} has no stored file"
    async with storage.opened(settings) as files:
        if isinstance(files, storage.LocalStorage):
            return await asyncio.to_thread(files.path(row.storage_key).read_bytes)
        from bgworker.storage import s3

        assert isinstance(files, s3.S3Storage)
        got = await files.get(row.storage_key)
        return b"".join([chunk async for chunk in got.chunks(1024 * 1024)])


async def stored_keys(settings: settings_mod.Settings) -> list[str]:
    """Every visible file's key (never an unfinished write), on either backend."""
    async with storage.opened(settings) as files:
        return sorted((await files.stale(float("inf"))).keys)


async def unfinished_writes(settings: settings_mod.Settings) -> list[str]:
    """Writes begun and never finished nor aborted: local temp parts, S3 multipart uploads."""
    async with storage.opened(settings) as files:
        return sorted((await files.stale(float("inf"))).parts)


async def wait_for_status(
    db: store.Store, request_id: uuid.UUID, statuses: set[str] | str, timeout: float = 30
) -> store.RequestRow:
    """Poll the row until it reaches one of ``statuses`` (waits on an event, not a sleep)."""
    wanted = {statuses} if isinstance(statuses, str) else statuses
    async with asyncio.timeout(timeout):
        while True:
            row = await db.requests.get_request(request_id)
            if row is not None and row.status in wanted:
                return row
            await asyncio.sleep(0.05)


async def wait_until(predicate: Callable[[], Any], timeout: float = 30) -> None:
    """Poll ``predicate`` (plain or async) until it returns something true."""
    async with asyncio.timeout(timeout):
        while True:
            result = predicate()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return
            await asyncio.sleep(0.05)


class DeadLetters:
    """Reads the dead-letter queue with basic.get; messages are kept in arrival order."""

    def __init__(
        self, channel: aio_pika.abc.AbstractChannel, namespace: str, queue_type: str = "quorum"
    ) -> None:
        self.channel = channel
        self.name = topology.Topology(namespace, queue_type=queue_type).dead_queue
        self.seen: list[aio_pika.abc.AbstractIncomingMessage] = []

    async def wait_for(self, n: int) -> list[aio_pika.abc.AbstractIncomingMessage]:
        queue = await self.channel.get_queue(self.name, ensure=False)

        async def enough() -> bool:
            message = await queue.get(no_ack=True, fail=False)
            if message is not None:
                self.seen.append(message)
            return len(self.seen) >= n

        await wait_until(enough)
        return self.seen

    def by_body(self, body: bytes) -> aio_pika.abc.AbstractIncomingMessage:
        [message] = [m for m in self.seen if m.body == body]
        return message


def dead_queue_of(settings: settings_mod.Settings) -> str:
    """The dead-letter queue of the test's namespace and queue type."""
    return topology.Topology(settings.namespace, queue_type=settings.queue_type).dead_queue


def assert_never_handed_back(intake: worker_intake.Intake | None, queue_type: str) -> None:
    """The worker handed no delivery back to the queue. On a classic queue nothing was
    redelivered either. A quorum queue returns a delivery that reaches the broker's channel
    after its consumer's ``basic.cancel`` (rabbit_fifo_client, rabbitmq-server#3729: the
    worker never sees it) and delivers it again, redelivered; the intake and the parker
    cancel consumers as they go, so there a redelivery is the broker's, not the worker's."""
    assert intake is not None
    assert intake.counts["returned"] == 0
    if queue_type == "classic":
        assert intake.counts["redelivered"] == 0


async def get_row(db: store.Store, request_id: uuid.UUID) -> store.RequestRow:
    """The request's row, which the test knows exists."""
    row = await db.requests.get_request(request_id)
    assert row is not None, f"no row for request {request_id}"
    return row


def stored_path(files: storage.LocalStorage, row: store.RequestRow) -> Path:
    """Where the file of a row that has one is stored."""
    assert row.storage_key is not None, f"request {row.id} has no stored file"
    return files.path(row.storage_key)


def text_header(headers: aio_pika.abc.HeadersType, name: str) -> str:
    """A header the test knows is a string (AMQP header values may be any field type)."""
    value = headers[name]
    assert isinstance(value, str), f"{name} is {value!r}, not a string"
    return value


def must_match(pattern: str | re.Pattern[str], text: str) -> re.Match[str]:
    """The first match of ``pattern`` in ``text``, which the test knows is there."""
    match = re.search(pattern, text)
    assert match is not None, f"{pattern!r} not in {text[:2000]!r}"
    return match


def event_body(**overrides: Any) -> dict[str, Any]:
    """A valid FileRequested body as a producer would send it (a fresh id), with overrides."""
    body: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "file_type": "blob",
        "criteria": {"size": 100},
        "filename": "x.bin",
    }
    body.update(overrides)
    return body


def raw(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


async def consume_all(queue_name: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Everything in a queue (a test's dead-letter queue), consumed: the test owns the
    namespace."""
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        queue = await channel.get_queue(queue_name, ensure=False)
        out = []
        while (message := await queue.get(fail=False)) is not None:
            await message.ack()
            out.append(message)
        return out
    finally:
        await connection.close()


def on_broker(namespaces: Iterable[str]) -> list[tuple[str, str]]:
    """("queue" or "exchange", name) of everything the test broker holds under these
    namespaces (a name is ``<namespace>.x`` or ``<namespace>-suffix.x``), read with
    rabbitmqctl: it sees what every process declared, subprocess workers' included (the
    management API is not enabled on this machine). Other runs' namespaces are not looked
    at: they share the broker and may still be running."""
    prefixes = tuple(p for ns in namespaces for p in (f"{ns}.", f"{ns}-"))
    found: list[tuple[str, str]] = []
    for kind in ("queue", "exchange"):
        out = subprocess.run(
            ["rabbitmqctl", "-q", "--no-table-headers", f"list_{kind}s", "name"],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        ).stdout
        found += [(kind, name) for name in out.splitlines() if name.startswith(prefixes)]
    return sorted(found)


async def delete_topology(topo: topology.Topology) -> None:
    """Delete what ``topo.declare`` makes (deleting what is not there is no error)."""
    connection = await aio_pika.connect(AMQP_URL)
    try:
        await topo.delete(await connection.channel())
    finally:
        await connection.close()


async def delete_from_broker(found: Iterable[tuple[str, str]]) -> None:
    """Delete these queues and exchanges (``on_broker``'s answer)."""
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        for kind, name in found:
            if kind == "queue":
                await channel.queue_delete(name)
            else:
                await channel.exchange_delete(name)
    finally:
        await connection.close()


async def work_queue_depth(channel: aio_pika.abc.AbstractChannel, namespace: str) -> int:
    """Ready messages in the work queue of the test's namespace."""
    return await broker.queue_depth(channel, topology.Topology(namespace).work_queue)


def node_project(folder: Path) -> Path:
    """A Node.js folder of the repo (package.json + package-lock.json) with its packages
    installed by ``npm ci`` (as ``make node`` does) when they are missing or older than the
    lock file. Skips the test when node or npm is not on the machine, or when the packages
    are missing and BGWORKER_TEST_INSTALL=no (install nothing)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed")
    installed = folder / "node_modules" / ".package-lock.json"
    lock = folder / "package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        if os.environ.get("BGWORKER_TEST_INSTALL") == "no":
            pytest.skip(f"BGWORKER_TEST_INSTALL=no and {folder.name} has no node_modules")
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=folder,
            check=True,
            timeout=600,
        )
    return folder


# Test-only ways into the request table, kept out of the production store.
_INSERT_REQUEST: Final = """
INSERT INTO bgworker_requests
    (id, file_type, event, filename, content_type, requester_id, requester_email,
     requested_at, max_attempts, tenant)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (id) DO NOTHING
"""


async def insert_request(db: store.Store, event: events.FileRequested, max_attempts: int) -> None:
    """Record ``event`` as a queued request, as a worker would have before its message was
    lost (no claim, no attempt)."""
    columns = store_requests.request_columns(event, max_attempts)
    await db.pool.execute(_INSERT_REQUEST, *columns.values())


async def list_outbox(db: store.Store, request_id: uuid.UUID) -> list[dict[str, Any]]:
    """Every outbox row of a request, by kind."""
    query = "SELECT * FROM bgworker_outbox WHERE request_id = $1 ORDER BY kind"
    return [dict(r) for r in await db.pool.fetch(query, request_id)]
