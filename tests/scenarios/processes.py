"""The scenario's bgworker processes: workers and a server, each on a named host.

On loopback a host is just a name; with network-namespace hosts a ``Launcher`` puts the
command on its host (``ip netns exec`` and the host's own mounts), and every process of a
host shares that host's build record. Every process is killed and reaped at the end,
whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import aiohttp

from tests.acceptance.processes import WORKER_READY, Proc
from tests.helpers import REPO
from tests.scenarios import handlers

# argv on a host -> the argv that runs it there (identity on loopback).
Launcher = Callable[[str, Sequence[str]], list[str]]


def on_loopback(host: str, argv: Sequence[str]) -> list[str]:
    return list(argv)


class Processes:
    def __init__(
        self, env: dict[str, str], log_dir: Path, launcher: Launcher = on_loopback
    ) -> None:
        self.env = env
        self.log_dir = log_dir
        self.launcher = launcher
        self.procs: list[tuple[str, Proc]] = []

    def builds_file(self, host: str) -> Path:
        return self.log_dir / f"builds-{host}.jsonl"

    async def _start(self, host: str, name: str, args: list[str], env: dict[str, str]) -> Proc:
        log_path = self.log_dir / f"{name}.log"
        log_file = log_path.open("wb")
        argv = self.launcher(host, [sys.executable, "-m", "bgworker", *args])
        full_env = {**self.env, **env, handlers.BUILDS_ENV: str(self.builds_file(host))}
        process = await asyncio.create_subprocess_exec(
            *argv, env=full_env, cwd=REPO, stdout=log_file, stderr=asyncio.subprocess.STDOUT
        )
        proc = Proc(name, process, log_path, log_file)
        self.procs.append((host, proc))
        return proc

    async def worker(self, host: str, env: dict[str, str] | None = None) -> Proc:
        """A ``bgworker worker`` on ``host``, consuming."""
        n = sum(1 for h, _ in self.procs if h == host)
        proc = await self._start(host, f"worker-{host}-{n}", ["worker"], env or {})
        await proc.wait_for_log(WORKER_READY, timeout=60)
        return proc

    async def server(
        self, host: str, address: str, port: int, env: dict[str, str] | None = None
    ) -> Proc:
        """``bgworker serve`` on ``host``, listening on ``address:port``, healthy."""
        args = ["serve", "--host", address, "--port", str(port)]
        proc = await self._start(host, f"serve-{host}", args, env or {})
        proc.port = port
        url = f"http://{address}:{port}/healthz"
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as session:
            while True:
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.get(url) as response:
                        if response.status == 200:
                            return proc
                if not proc.running() or time.monotonic() > deadline:
                    raise AssertionError(f"{proc.name} never answered {url}:\n{proc.log()}")
                await asyncio.sleep(0.2)

    def on(self, host: str) -> list[Proc]:
        return [p for h, p in self.procs if h == host]

    def logs(self, tail: int = 4000) -> str:
        return "\n".join(f"--- {p.name}\n{p.log()[-tail:]}" for _, p in self.procs)

    def grep(self, text: str) -> int:
        """Lines containing ``text`` in every process's log."""
        return sum(p.log().count(text) for _, p in self.procs)

    async def stop(self, timeout: float = 30) -> dict[str, int | None]:
        """SIGTERM everything (workers drain), SIGKILL what is still running after
        ``timeout``; returns each process's exit status."""
        for _, proc in self.procs:
            if proc.running():
                proc.signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        for _, proc in self.procs:
            try:
                async with asyncio.timeout(timeout):
                    codes[proc.name] = await proc.process.wait()
            except TimeoutError:
                proc.process.kill()
                await proc.process.wait()
                codes[proc.name] = None
            proc.log_file.close()
        return codes

    async def kill_all(self) -> None:
        for _, proc in self.procs:
            if proc.running():
                proc.process.kill()
            await proc.process.wait()
            proc.log_file.close()
