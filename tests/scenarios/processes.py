"""The scenario's bgworker processes: workers and a server, each on a named host.

Where a host's processes run is a ``Placement``: on loopback (``Loopback``) a host is just a
name; on network-namespace hosts (``tests.scenarios.on_hosts``) the command runs on the
host, with the host's own /tmp. Each host's workers append their completed builds to one
file there (``builds_inside``), which the test reads from outside (``builds_outside``).
Every process is killed and reaped at the end, whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Protocol

import aiohttp

from tests.acceptance.processes import WORKER_READY
from tests.helpers import REPO
from tests.scenarios import handlers


class Placement(Protocol):
    def popen(
        self, host: str, argv: Sequence[str], env: dict[str, str], log: IO[bytes]
    ) -> subprocess.Popen[bytes]: ...

    def builds_inside(self, host: str) -> str: ...

    def builds_outside(self, host: str) -> Path: ...


class Loopback:
    """Every host on this machine's loopback."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir

    def popen(
        self, host: str, argv: Sequence[str], env: dict[str, str], log: IO[bytes]
    ) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            argv, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def builds_inside(self, host: str) -> str:
        return str(self.builds_outside(host))

    def builds_outside(self, host: str) -> Path:
        return self.log_dir / f"builds-{host}.jsonl"


class Proc:
    """One bgworker process on a host, its output in a log file."""

    def __init__(self, name: str, host: str, popen: subprocess.Popen[bytes], log: Path) -> None:
        self.name = name
        self.host = host
        self.popen = popen
        self.log_path = log

    def running(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: signal.Signals = signal.SIGTERM) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)

    async def wait_for_log(self, pattern: re.Pattern[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not pattern.search(self.log()):
            if not self.running() or time.monotonic() > deadline:
                raise AssertionError(f"{self.name} did not log {pattern.pattern!r}:\n{self.log()}")
            await asyncio.sleep(0.1)

    async def wait(self, timeout: float) -> int | None:
        """The exit status, or None if it is still running after ``timeout``."""
        try:
            return await asyncio.to_thread(self.popen.wait, timeout)
        except subprocess.TimeoutExpired:
            return None


class Processes:
    def __init__(self, env: dict[str, str], log_dir: Path, placement: Placement) -> None:
        self.env = env
        self.log_dir = log_dir
        self.placement = placement
        self.procs: list[Proc] = []

    def builds_files(self) -> list[Path]:
        return [self.placement.builds_outside(h) for h in sorted({p.host for p in self.procs})]

    def _start(self, host: str, name: str, args: list[str], env: dict[str, str]) -> Proc:
        log_path = self.log_dir / f"{name}.log"
        full_env = {
            **self.env,
            **env,
            handlers.BUILDS_ENV: self.placement.builds_inside(host),
            "PYTHONPATH": str(REPO),
        }
        argv = [sys.executable, "-m", "bgworker", *args]
        with log_path.open("wb") as log:
            popen = self.placement.popen(host, argv, full_env, log)
        proc = Proc(name, host, popen, log_path)
        self.procs.append(proc)
        return proc

    async def worker(self, host: str, env: dict[str, str] | None = None) -> Proc:
        """A ``bgworker worker`` on ``host``, consuming."""
        n = sum(1 for p in self.procs if p.host == host)
        proc = self._start(host, f"worker-{host}-{n}", ["worker"], env or {})
        await proc.wait_for_log(WORKER_READY, timeout=60)
        return proc

    async def server(
        self, host: str, address: str, port: int, url: str, env: dict[str, str] | None = None
    ) -> Proc:
        """``bgworker serve`` on ``host``, listening on ``address:port``; healthy at
        ``url`` (the address the test reaches it at)."""
        args = ["serve", "--host", address, "--port", str(port)]
        proc = self._start(host, f"serve-{host}", args, env or {})
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as session:
            while True:
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.get(f"{url}/healthz") as response:
                        if response.status == 200:
                            return proc
                if not proc.running() or time.monotonic() > deadline:
                    raise AssertionError(f"{proc.name} never answered {url}:\n{proc.log()}")
                await asyncio.sleep(0.2)

    def on(self, host: str) -> list[Proc]:
        return [p for p in self.procs if p.host == host]

    def logs(self, tail: int = 4000) -> str:
        return "\n".join(f"--- {p.name}\n{p.log()[-tail:]}" for p in self.procs)

    def count(self, text: str, host: str | None = None) -> int:
        """Occurrences of ``text`` in the logs (of ``host``'s processes if given)."""
        return sum(p.log().count(text) for p in self.procs if host in (None, p.host))

    async def stop(self, timeout: float = 30) -> dict[str, int | None]:
        """SIGTERM everything (workers drain), SIGKILL what still runs after ``timeout``;
        each process's exit status (None: it had to be killed)."""
        for proc in self.procs:
            if proc.running():
                proc.signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        for proc in self.procs:
            codes[proc.name] = await proc.wait(timeout)
            if codes[proc.name] is None:
                proc.signal(signal.SIGKILL)
                await proc.wait(10)
        return codes
