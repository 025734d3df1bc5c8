"""What the log says when a worker's connections are cut (issue 18, finding 11): one
WARNING from bgworker naming what was lost and that it reconnects, one INFO when it is
back; no ERROR and no traceback from bgworker or its client libraries.

The connections go through a TCP proxy of the test's own (tests/tcp_proxy.py), so cutting
them touches nobody else's connection to the shared services.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import SecretStr

from bgworker import settings as settings_mod
from bgworker import store
from tests import tcp_proxy
from tests.helpers import AMQP_URL, Publish, StartWorker, get_row, wait_for_status, wait_until


@dataclass
class Proxies:
    broker: tcp_proxy.TcpProxy
    database: tcp_proxy.TcpProxy


@pytest.fixture
async def proxies(settings: settings_mod.Settings) -> AsyncIterator[Proxies]:
    """The worker's broker and database connections, each through a proxy of its own.
    Request it before ``start_worker``: the proxies then close after the worker stopped."""
    database_url = settings.database_url.get_secret_value()
    async with (
        tcp_proxy.proxy_to(AMQP_URL) as broker,
        tcp_proxy.proxy_to(database_url) as database,
    ):
        settings.amqp_url = SecretStr(broker.url(AMQP_URL))
        settings.database_url = SecretStr(database.url(database_url))
        yield Proxies(broker, database)


def _loud(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]


def _connection_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [
        (r.levelname, r.getMessage())
        for r in caplog.records
        if r.name == "bgworker.connections" and r.levelno >= logging.INFO
    ]


async def _one_warning_one_info(caplog: pytest.LogCaptureFixture, service: str) -> None:
    """Wait for the INFO (back), then check the whole story: exactly these two lines above
    DEBUG about the connection, and nothing at WARNING or with a traceback besides."""

    def back() -> bool:
        return any(level == "INFO" for level, _ in _connection_lines(caplog))

    await wait_until(back, timeout=60)
    lines = _connection_lines(caplog)
    assert [level for level, _ in lines] == ["WARNING", "INFO"], lines
    assert lines[0][1].startswith(f"lost the connection to {service} at 127.0.0.1:")
    assert "reconnecting" in lines[0][1]
    assert lines[1][1].startswith(f"connection to {service} at 127.0.0.1:")
    assert " is back (after " in lines[1][1]
    loud = _loud(caplog)
    assert [r.getMessage() for r in loud] == [lines[0][1]], [
        (r.name, r.levelname, r.getMessage(), r.exc_info) for r in loud
    ]


async def _cut(proxy: tcp_proxy.TcpProxy) -> None:
    proxy.cut()  # reset both ways; reconnects are let through


async def _away(proxy: tcp_proxy.TcpProxy) -> None:
    """Refused, then reset at connect, then back: across aio-pika's reconnect attempts (every
    5 s), each failed one at DEBUG."""
    await proxy.refuse()
    await asyncio.sleep(6)  # the outage itself, not a wait for a condition
    proxy.mode = tcp_proxy.Mode.RESET
    accepted = proxy.accepted
    await proxy.start()
    await wait_until(lambda: proxy.accepted > accepted, timeout=30)
    proxy.mode = tcp_proxy.Mode.FORWARD


async def _restart(proxy: tcp_proxy.TcpProxy) -> None:
    """What is open is reset, new connections refused for a while, then let through."""
    await proxy.refuse()
    await asyncio.sleep(3)  # the outage itself, not a wait for a condition
    await proxy.start()


@pytest.mark.parametrize(
    ("service", "outage"),
    [("RabbitMQ", _cut), ("RabbitMQ", _away), ("PostgreSQL", _cut), ("PostgreSQL", _restart)],
    ids=["broker-cut", "broker-away", "database-cut", "database-restart"],
)
async def test_a_lost_connection_is_one_warning_and_one_info(
    proxies: Proxies,  # first: torn down after the worker
    db: store.Store,
    publish: Publish,
    start_worker: StartWorker,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    service: str,
    outage: Callable[[tcp_proxy.TcpProxy], Awaitable[None]],
) -> None:
    # A job runs through the outage (until the test opens its gate): its lease keeper, the
    # reaper, the outbox, the intake and the health check all find the connection gone;
    # the log says so once. (With no job running, an idle pool connection cut and replaced
    # before anyone used it goes unnoticed, and unlogged: nothing failed.)
    caplog.set_level(logging.INFO)
    await start_worker()
    gate = tmp_path / "gate"
    running = await publish("gate", {"path": str(gate)})
    claimed = await wait_for_status(db, running.id, "running")

    async def renewed() -> bool:  # so the lease keeper's connection is open when it is cut
        row = await get_row(db, running.id)
        return row.lease_expires_at != claimed.lease_expires_at

    await wait_until(renewed, timeout=30)
    caplog.clear()
    await outage(proxies.broker if service == "RabbitMQ" else proxies.database)
    await _one_warning_one_info(caplog, service)
    # Back means back: the job ends ready, and new work is taken and done.
    gate.touch()
    await wait_for_status(db, running.id, "ready", timeout=60)
    after = await publish("blob", {"size": 100, "seed": 4})
    await wait_for_status(db, after.id, "ready")
    assert not _loud(caplog)[1:]
