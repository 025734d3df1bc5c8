"""`bgworker demo`: the whole pipeline once, and a clear failure when a service is missing."""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.acceptance.processes import run_cli
from tests.helpers import AMQP_URL, db_url, drop_database


@pytest.fixture
async def demo_env() -> AsyncIterator[dict[str, str]]:
    """The demo's own settings only (it makes its namespace, keys and ports), pointed at a
    database of its own that is dropped afterwards."""
    name = f"bgw_demo_{uuid.uuid4().hex[:10]}"
    base = {k: v for k, v in os.environ.items() if not k.startswith("BGWORKER_")}
    yield {**base, "BGWORKER_AMQP_URL": AMQP_URL, "BGWORKER_DATABASE_URL": db_url(name)}
    await drop_database(name)


async def test_demo_runs_end_to_end(demo_env: dict[str, str]) -> None:
    result = await run_cli("demo", "--rows", "500", env=demo_env, timeout=240)
    logs = re.search(r"logs in (\S+)", result.out)
    if logs:
        work = Path(logs[1])
        assert not (work / "files").exists(), "the demo left its built files behind"
        assert (work / "worker.log").is_file()
        shutil.rmtree(work)
    assert result.code == 0, result.out + result.err
    assert "sha256 verified" in result.out
    assert "email received" in result.out
    assert "worker stopped (exit 0)" in result.out
    assert "server stopped (exit 0)" in result.out


async def test_demo_names_rabbitmq_and_how_to_start_it(demo_env: dict[str, str]) -> None:
    env = {**demo_env, "BGWORKER_AMQP_URL": "amqp://guest:sesame@127.0.0.1:1/"}
    result = await run_cli("demo", "--rows", "10", env=env, timeout=60)
    assert result.code != 0
    assert "RabbitMQ is not reachable at 127.0.0.1:1" in result.err
    assert "rabbitmq-server" in result.err and "BGWORKER_AMQP_URL" in result.err
    assert "sesame" not in result.out + result.err
    assert "sha256 verified" not in result.out


async def test_demo_names_postgresql_and_how_to_start_it(demo_env: dict[str, str]) -> None:
    env = {**demo_env, "BGWORKER_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/bgw_demo"}
    result = await run_cli("demo", "--rows", "10", env=env, timeout=60)
    assert result.code != 0
    assert "PostgreSQL is not reachable at 127.0.0.1:1" in result.err
    assert "pg_ctlcluster" in result.err and "BGWORKER_DATABASE_URL" in result.err
    assert "RabbitMQ" not in result.err  # the missing piece is named, not a guess
