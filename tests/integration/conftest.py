"""Fixtures shared by integration test modules: the download tests' ready file and signer,
the dead-letter tests' `bgworker` command and dead-letter queue."""

from __future__ import annotations

import asyncio
import os
import pty
import sys
from collections.abc import AsyncIterator, Iterator

import aio_pika
import pytest

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.links import tokens
from bgworker.ops.deadletters import queue
from tests import dlq_handlers
from tests.helpers import AMQP_URL, REPO, Publish, StartWorker, settings_env, wait_for_status
from tests.integration.console import serving
from tests.integration.downloads import CONTENT_TYPE, FILENAME, SEED, SIZE
from tests.integration.letters import Cli, CliResult


@pytest.fixture
def signer(settings: settings_mod.Settings) -> tokens.Signer:
    return tokens.Signer(settings.tokens)


@pytest.fixture
async def ready(db: store.Store, publish: Publish, start_worker: StartWorker) -> store.RequestRow:
    """A request made ready by a real worker, owned by requester ``alice``."""
    await start_worker()
    event = await publish(
        "blob",
        {"size": SIZE, "seed": SEED},
        filename=FILENAME,
        content_type=CONTENT_TYPE,
        requester={"id": "alice"},
    )
    return await wait_for_status(db, event.id, "ready")


@pytest.fixture
def cli(settings: settings_mod.Settings) -> Cli:
    """Run the real `bgworker` command in a subprocess (without blocking the test's loop,
    where the worker runs)."""

    async def _run(
        *argv: str, stdin: str = "", terminal: str | None = None, **env: str
    ) -> CliResult:
        # terminal: what a person types, on a pseudo-terminal (prompts refuse a pipe).
        master, slave = pty.openpty() if terminal is not None else (None, None)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bgworker",
            *argv,
            cwd=REPO,
            env={**settings_env(settings), "BGWORKER_LOG_LEVEL": "WARNING", **env},
            stdin=asyncio.subprocess.PIPE if slave is None else slave,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            if master is not None and slave is not None and terminal is not None:
                os.close(slave)
                os.write(master, terminal.encode())
            typed = stdin.encode() if master is None else None
            out, err = await asyncio.wait_for(proc.communicate(typed), 120)
        finally:
            if master is not None:
                os.close(master)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    return _run


@pytest.fixture
async def dead_queue(
    settings: settings_mod.Settings, amqp: aio_pika.abc.AbstractChannel
) -> AsyncIterator[queue.DeadLetterQueue]:
    async with queue.DeadLetterQueue(AMQP_URL, settings.namespace, settings.queue_type) as q:
        yield q


@pytest.fixture
def fixable_handler(settings: settings_mod.Settings) -> Iterator[None]:
    """Registers tests/dlq_handlers.py, whose "fixable" handler fails until a test flips
    ``FIXED`` (the deploy of a fix)."""
    settings.handlers.append("tests.dlq_handlers:registry")
    dlq_handlers.FIXED["value"] = False
    yield
    dlq_handlers.FIXED["value"] = False


@pytest.fixture
async def console(
    settings: settings_mod.Settings,
    db: store.Store,
    amqp: aio_pika.abc.AbstractChannel,
    unused_tcp_port: int,
) -> AsyncIterator[str]:
    """The app (downloads + admin console) served on a local port; yields its base URL."""
    async with serving(settings, db, unused_tcp_port) as base:
        yield base
