"""Workers through PgBouncer in transaction mode (BGWORKER_DATABASE_POOLER=transaction):
the pipeline end to end, more worker connections than PostgreSQL's max_connections on a
server pool of 10, and what happens without the setting. Debian's PgBouncer 1.18, started
by the test on a free loopback port (tests/pgbouncer.py); skipped if it is not installed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Final

import aiohttp
import asyncpg
import pytest
from pydantic import SecretStr

from bgworker import faults, store
from bgworker import settings as settings_mod
from bgworker.cli.smtp_sink import SmtpSink, text_body
from bgworker.contract import events
from tests import helpers, pgbouncer
from tests.helpers import Publish, StartWorker, wait_until

pytestmark = pytest.mark.skipif(pgbouncer.BINARY is None, reason=pgbouncer.MISSING)

SERVER_POOL: Final = 10
OBSERVER: Final = "bgw-test-observer"
# The lease keeper's test: renewed every third of it, each round's statement limited to that.
LEASE: Final = 3.0


@pytest.fixture
def bouncer() -> Iterator[pgbouncer.PgBouncer]:
    with pgbouncer.running(server=helpers.PG_ADMIN, pool_size=SERVER_POOL) as running:
        yield running


@pytest.fixture
def pooled(settings: settings_mod.Settings, bouncer: pgbouncer.PgBouncer) -> settings_mod.Settings:
    """The test's settings with the database reached through PgBouncer, statement cache
    off. The test's own ``db`` fixture (if any) still talks to PostgreSQL directly."""
    settings.database_url = SecretStr(bouncer.url(settings.database_url.get_secret_value()))
    settings.database_pooler = "transaction"
    return settings


async def _publish_many(publish: Publish, n: int, seconds: float) -> list[uuid.UUID]:
    events = await asyncio.gather(
        *(
            publish(
                "slow",
                {"seconds": seconds},
                requester={"email": f"user{i}@example.com"},
            )
            for i in range(n)
        )
    )
    return [e.id for e in events]


async def _direct(dsn: str) -> asyncpg.Connection:
    """A connection of the test's own to PostgreSQL, not through PgBouncer; named so that
    the sampler does not count it."""
    return await asyncpg.connect(dsn, server_settings={"application_name": OBSERVER})


async def _statuses(dsn: str, ids: list[uuid.UUID]) -> dict[str, int]:
    conn = await _direct(dsn)
    try:
        rows = await conn.fetch(
            "SELECT status, count(*) AS n FROM bgworker_requests WHERE id = ANY($1) "
            "GROUP BY status",
            ids,
        )
    finally:
        await conn.close()
    return {r["status"]: r["n"] for r in rows}


async def _exactly_once(dsn: str, ids: list[uuid.UUID], smtp_sink: SmtpSink) -> None:
    """Every request ready after one attempt, one attempt logged each, one email each."""
    conn = await _direct(dsn)
    try:
        rows = await conn.fetch(
            "SELECT id, status, attempts, notified_at FROM bgworker_requests WHERE id = ANY($1)",
            ids,
        )
        logged = await conn.fetchval(
            "SELECT count(*) FROM bgworker_attempts WHERE request_id = ANY($1)", ids
        )
    finally:
        await conn.close()
    assert len(rows) == len(ids)
    assert {r["status"] for r in rows} == {"ready"}
    assert {r["attempts"] for r in rows} == {1}
    assert logged == len(ids)
    await wait_until(lambda: len(smtp_sink.messages) >= len(ids), timeout=60)
    message_ids = [m["Message-ID"] for m in smtp_sink.messages]
    assert len(message_ids) == len(set(message_ids)) == len(ids)
    assert {f"<{i}.ready@bgworker>" for i in ids} == set(message_ids)


async def test_pipeline_through_pgbouncer_in_transaction_mode(
    pooled: settings_mod.Settings,
    database_url: str,
    bouncer: pgbouncer.PgBouncer,
    publish: Publish,
    start_worker: StartWorker,
    start_server: helpers.StartServer,
    smtp_sink: SmtpSink,
) -> None:
    base = await start_server()  # `serve` through PgBouncer too
    await start_worker()
    await start_worker()
    ids = await _publish_many(publish, 40, 0.2)

    async def done() -> bool:
        return (await _statuses(database_url, ids)).get("ready", 0) == len(ids)

    await wait_until(done, timeout=90)
    await _exactly_once(database_url, ids, smtp_sink)
    # The server checks a link against the request's row through PgBouncer as well.
    link = helpers.must_match(r"http://\S+/download/\S+", _body(smtp_sink, ids[0])).group(0)
    path = link.split("/download/", 1)[1]
    async with aiohttp.ClientSession() as session, session.get(f"{base}/download/{path}") as got:
        assert got.status == 200
        assert await got.read() == b"slept 0.2s\n"


def _body(smtp_sink: SmtpSink, request_id: uuid.UUID) -> str:
    [mail] = [m for m in smtp_sink.messages if m["Message-ID"] == f"<{request_id}.ready@bgworker>"]
    return text_body(mail)


async def _slow_progress(dsn: str, *, seconds: float) -> None:
    conn = await _direct(dsn)
    try:
        await conn.execute(
            f"""
            CREATE FUNCTION test_slow_update() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN PERFORM pg_sleep({seconds}); RETURN NEW; END $$;
            CREATE TRIGGER test_slow_update BEFORE UPDATE ON bgworker_requests
            FOR EACH ROW WHEN (OLD.status = 'running' AND NEW.status = 'running')
            EXECUTE FUNCTION test_slow_update();
            """
        )
    finally:
        await conn.close()


def _clients(port: int) -> int:
    """Established TCP connections to ``port`` on loopback, seen from the client side:
    the connections every pool of this process holds to PgBouncer."""
    count = 0
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            remote, state = fields[2], fields[3]
            if state == "01" and int(remote.split(":")[1], 16) == port:
                count += 1
    return count


@contextlib.asynccontextmanager
async def _peaks(port: int, database: str) -> AsyncIterator[dict[str, int]]:
    """Sample, every 50 ms, the client connections to PgBouncer and the server connections
    PostgreSQL has for the test's database (this sampler's own excepted); the peaks."""
    peaks = {"clients": 0, "servers": 0}
    observer = await _direct(helpers.PG_ADMIN)

    async def sample() -> None:
        while True:
            peaks["clients"] = max(peaks["clients"], _clients(port))
            servers = await observer.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 "
                "AND application_name <> $2",
                database,
                OBSERVER,
            )
            peaks["servers"] = max(peaks["servers"], servers)
            await asyncio.sleep(0.05)

    task = asyncio.create_task(sample())
    try:
        yield peaks
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await observer.close()


@pytest.mark.slow
async def test_more_worker_connections_than_max_connections(
    pooled: settings_mod.Settings,
    database_url: str,
    bouncer: pgbouncer.PgBouncer,
    publish: Publish,
    start_worker: StartWorker,
    smtp_sink: SmtpSink,
) -> None:
    """Workers whose pools together open more connections than PostgreSQL accepts at all
    (max_connections) run through a PgBouncer holding 10 server connections: every request
    is built once and mailed once."""
    admin = await asyncpg.connect(helpers.PG_ADMIN)
    try:
        max_connections = int(await admin.fetchval("SHOW max_connections"))
    finally:
        await admin.close()
    # Three workers whose pools open up to concurrency + 4 connections each, plus a lease
    # keeper each: 3 x (48 + 5) = 159 with max_connections 100. A pool opens a connection
    # when every one it has is busy, and a worker's transactions are short and few (the
    # outcomes of jobs that finish together share one), so here the database is slow: once
    # all the jobs run, each save of a running job's progress takes 300 ms on the server (a
    # trigger in the test's own database), and every job saves its progress every second,
    # so the workers' statements wait in PgBouncer's queue for its 10 server connections,
    # each on a client connection of its own.
    workers = 3
    pooled.worker.concurrency = max_connections // workers + 15
    pooled.worker.lease_seconds = 60  # renewals queue too: no lease may run out here
    n = workers * pooled.worker.concurrency
    database = database_url.rsplit("/", 1)[1]
    async with _peaks(bouncer.port, database) as peaks:
        for _ in range(workers):
            await start_worker()
        ids = await _publish_many(publish, n, 6.0)

        async def running() -> bool:
            return (await _statuses(database_url, ids)).get("running", 0) == n

        # Slow once all run: claims queued behind slow saves would start fewer jobs.
        await wait_until(running, timeout=60)
        await _slow_progress(database_url, seconds=0.3)

        async def done() -> bool:
            return (await _statuses(database_url, ids)).get("ready", 0) == n

        await wait_until(done, timeout=120)
    await _exactly_once(database_url, ids, smtp_sink)
    assert peaks["clients"] > max_connections, peaks
    assert 0 < peaks["servers"] <= SERVER_POOL, peaks


async def test_without_the_setting_a_command_refuses_to_start(
    settings: settings_mod.Settings, bouncer: pgbouncer.PgBouncer
) -> None:
    """Transaction pooling with asyncpg's statement cache on fails at random (a statement
    prepared on one server connection is missing on the next transaction's). So a command
    whose database is behind one while BGWORKER_DATABASE_POOLER is none refuses to start,
    with one line that names the setting (exit 64); with the setting it starts."""
    settings.database_url = SecretStr(bouncer.url(settings.database_url.get_secret_value()))
    env = helpers.settings_env(settings)
    refused = await _cli(env, "worker")
    assert refused.returncode == 64, refused.stderr
    [line] = refused.stderr.strip().splitlines()
    assert "is a pooler in transaction mode" in line
    assert "set BGWORKER_DATABASE_POOLER=transaction" in line
    # `status` probes the same way; with the setting it gets as far as the request.
    assert (await _cli(env, "status", str(uuid.uuid4()))).returncode == 64
    env["BGWORKER_DATABASE_POOLER"] = "transaction"
    answered = await _cli(env, "status", str(uuid.uuid4()))
    assert "is a pooler" not in answered.stderr
    assert "not recorded yet" in answered.stderr
    # What such a pooler answers when it happens all the same (a pooler the probe cannot
    # catch): the infrastructure's fault, so deliveries are held, never dead-lettered.
    missing = asyncpg.InvalidSQLStatementNameError('prepared statement "x" does not exist')
    assert faults.is_infrastructure(missing)


async def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "bgworker", *args],
        env={**env, "BGWORKER_STARTUP_RETRY_SECONDS": "0"},
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_the_lease_keeper_renews_through_pgbouncer(
    database_url: str,
    db: store.Store,
    bouncer: pgbouncer.PgBouncer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The lease keeper's own connection (not the worker's pool) goes through PgBouncer
    too: its renewals keep working while other clients make PgBouncer move it from one
    server connection to another between rounds."""
    url = bouncer.url(database_url)
    worker = "pgbouncer-test:1:abcdef"
    event = events.FileRequested.model_validate(helpers.event_body())
    claim = await db.requests.record_and_claim(event, 3, worker, LEASE)
    assert claim is not None
    lost: list[int] = []
    churn = await store.create_pool(url, min_size=5, max_size=5, pooler="transaction")
    stop = asyncio.Event()

    async def busy() -> None:
        while not stop.is_set():
            await churn.fetchval("SELECT pg_sleep(0.01)")

    busy_tasks = [asyncio.create_task(busy()) for _ in range(5)]
    try:
        async with store.LeaseKeeper(url, worker, LEASE, pooler="transaction") as keeper:
            keeper.hold(claim, lambda: lost.append(1))
            seen = {(await helpers.get_row(db, claim.request_id)).lease_expires_at}

            async def renewed() -> bool:
                seen.add((await helpers.get_row(db, claim.request_id)).lease_expires_at)
                return len(seen) > 5

            await wait_until(renewed, timeout=30)
    finally:
        stop.set()
        await asyncio.gather(*busy_tasks)
        await churn.close()
    assert lost == []
    # Not one round failed for PgBouncer's sake (a failed round is a WARNING of
    # bgworker.connections, and the next round reconnects, which would hide it from the
    # lease): a prepared statement gone with its server connection would say so here. A
    # round that timed out is the machine's load, not the pooler (the CI gate runs two test
    # processes on two cores): those alone are let through.
    failed = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert [m for m in failed if "(TimeoutError)" not in m] == []
