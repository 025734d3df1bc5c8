"""Start-up through a service that is not up yet (issue 18, finding 12): `worker` and
`serve` wait it out for BGWORKER_STARTUP_RETRY_SECONDS, one line per retry, then exit 69
naming it; a name that does not resolve or refused credentials still fail at once.

The services are reached through TCP proxies of the test's own (tests/tcp_proxy.py) that
refuse or reset connections first and forward them later."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import pytest

from bgworker import settings as settings_mod
from tests import tcp_proxy
from tests.acceptance.processes import Proc, Spawn, run_cli
from tests.helpers import AMQP_URL, settings_env, wait_until

pytestmark = pytest.mark.slow

RETRY_LINE = re.compile(r"(RabbitMQ|PostgreSQL) at 127\.0\.0\.1:\d+ is not available yet \(")


@dataclass
class Down:
    """The broker resets every connection, PostgreSQL refuses them (nothing listens)."""

    broker: tcp_proxy.TcpProxy
    database: tcp_proxy.TcpProxy
    env: dict[str, str]

    async def come_up(self) -> None:
        self.broker.mode = tcp_proxy.Mode.FORWARD
        await self.database.start()


@pytest.fixture
async def down(
    settings: settings_mod.Settings,
    amqp: aio_pika.abc.AbstractChannel,  # the topology a worker declares is deleted after
) -> AsyncIterator[Down]:
    database_url = settings.database_url.get_secret_value()
    async with (
        tcp_proxy.proxy_to(AMQP_URL) as broker,
        tcp_proxy.proxy_to(database_url) as database,
    ):
        broker.mode = tcp_proxy.Mode.RESET
        await database.refuse()
        env = {
            **settings_env(settings),
            "BGWORKER_AMQP_URL": broker.url(AMQP_URL),
            "BGWORKER_DATABASE_URL": database.url(database_url),
        }
        yield Down(broker, database, env)


def _retried(log_path: Path, service: str) -> bool:
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    return any(m[1] == service for m in RETRY_LINE.finditer(text))


async def _started_while_down(
    spawn: Spawn, command: str, down: Down, log_path: Path
) -> asyncio.Future[Proc]:
    """``command`` started; returned once it has logged its wait for PostgreSQL (which
    refuses), to be awaited once the services are up (then it is ready)."""
    started = asyncio.ensure_future(spawn(command, env=down.env))
    await wait_until(lambda: _retried(log_path, "PostgreSQL"), timeout=60)
    return started


async def test_a_worker_started_before_its_services_waits_for_them(
    down: Down, spawn: Spawn, tmp_path: Path
) -> None:
    log_path = tmp_path / "worker-0.log"
    started = await _started_while_down(spawn, "worker", down, log_path)
    await down.database.start()  # PostgreSQL first: the probe then meets the resetting broker
    await wait_until(lambda: _retried(log_path, "RabbitMQ"), timeout=60)
    assert down.broker.accepted >= 1
    down.broker.mode = tcp_proxy.Mode.FORWARD
    worker = await started  # consuming
    assert worker.running()
    log = worker.log()
    assert "Traceback" not in log
    # One line per retry, each naming the service and what it answered.
    lines = [line for line in log.splitlines() if RETRY_LINE.search(line)]
    assert lines and all("retrying in" in line for line in lines)
    assert any("refused" in line.lower() for line in lines)
    assert any("reset" in line.lower() for line in lines)


async def test_a_server_started_before_its_database_waits_for_it(
    down: Down, spawn: Spawn, tmp_path: Path
) -> None:
    started = await _started_while_down(spawn, "serve", down, tmp_path / "serve-0.log")
    await down.come_up()
    server = await started  # answering /healthz
    assert server.running()


async def test_the_wait_is_bounded_then_exit_69_naming_the_service(down: Down) -> None:
    await down.database.start()  # only the broker stays down
    env = {**down.env, "BGWORKER_STARTUP_RETRY_SECONDS": "2"}
    result = await run_cli("worker", env=env, timeout=120)
    assert result.code == 69, result.err
    assert "Traceback" not in result.err
    *retries, last = result.err.splitlines()
    assert retries and all(RETRY_LINE.search(line) for line in retries), result.err
    assert last.startswith(
        f"bgworker worker: cannot reach RabbitMQ at 127.0.0.1:{down.broker.port}"
    )


@pytest.mark.parametrize(
    ("variable", "url", "code", "says"),
    [
        (
            "BGWORKER_AMQP_URL",
            AMQP_URL.replace("guest:guest@", "guest:wrong-password@"),
            64,
            "refused the login of 'guest'",
        ),
        (
            "BGWORKER_AMQP_URL",
            "amqp://guest:guest@no-such-host.invalid:5672/",
            69,
            "cannot reach RabbitMQ at no-such-host.invalid:5672",
        ),
        (
            "BGWORKER_DATABASE_URL",
            "postgresql://no_such_role@127.0.0.1:5432/postgres",
            64,
            "refused the login",
        ),
        (
            "BGWORKER_DATABASE_URL",
            "postgresql://postgres@no-such-host.invalid:5432/bgworker",
            69,
            "cannot reach PostgreSQL at no-such-host.invalid:5432",
        ),
    ],
    ids=["broker-password", "broker-unknown-host", "database-role", "database-unknown-host"],
)
async def test_a_wrong_address_or_refused_login_fails_at_once(
    settings: settings_mod.Settings, variable: str, url: str, code: int, says: str
) -> None:
    # The default wait (60 s) applies; none of these is waited out: one line, no retry.
    env = {**settings_env(settings), variable: url}
    result = await run_cli("worker", env=env, timeout=50)
    assert result.code == code, result.err
    [line] = result.err.splitlines()
    assert line.startswith("bgworker worker: ") and says in line, line
