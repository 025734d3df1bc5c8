"""The ``spawn`` fixture: the real ``bgworker`` command started as a subprocess, ready.

Long-running commands (``worker``, ``serve``) log to a file in the test's tmp_path; the
factory kills and reaps whatever is still running at teardown. Short commands are run to
completion by ``tests.acceptance.processes.run_cli``.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bgworker import settings as settings_mod
from bgworker.cli.smtp_sink import free_port
from tests.acceptance.processes import WORKER_READY, Proc, Spawn, wait_healthy
from tests.helpers import REPO, settings_env


@pytest.fixture
async def spawn(settings: settings_mod.Settings, tmp_path: Path) -> AsyncIterator[Spawn]:
    """spawn("worker" | "serve", *args, env={...}) -> Proc, started and ready."""
    procs: list[Proc] = []

    async def _spawn(command: str, *args: str, env: dict[str, str] | None = None) -> Proc:
        name = f"{command}-{len(procs)}"
        log_path = tmp_path / f"{name}.log"
        log_file = log_path.open("wb")
        port = None
        argv = ["-m", "bgworker", command, *args]
        if command == "serve":
            port = free_port()
            argv += ["--port", str(port)]
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *argv,
            env={**settings_env(settings), **(env or {})},
            cwd=REPO,
            stdout=log_file,
            stderr=asyncio.subprocess.STDOUT,
        )
        proc = Proc(name, process, log_path, log_file, port)
        procs.append(proc)
        if command == "worker":
            await proc.wait_for_log(WORKER_READY)
        elif command == "serve":
            await wait_healthy(proc)
        return proc

    yield _spawn
    for proc in procs:
        if proc.running():
            proc.process.kill()
        await proc.process.wait()
        proc.log_file.close()
