"""The real ``bgworker`` command as subprocesses: a long-running one (``Proc``: waited on,
signalled, measured) and a short one run to completion (``run_cli``)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pty
import re
import signal
import struct
import sys
import termios
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import aiohttp

from tests.helpers import REPO

# Logged by the worker once it consumes (bgworker.worker.Worker.run).
WORKER_READY = re.compile(r"worker \S+ consuming ")


@dataclass
class Proc:
    name: str
    process: asyncio.subprocess.Process
    log_path: Path
    log_file: IO[bytes]
    port: int | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.returncode is None

    def log(self) -> str:
        self.log_file.flush()
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: signal.Signals = signal.SIGTERM) -> None:
        self.process.send_signal(sig)

    def peak_rss_mib(self) -> float:
        """Peak resident set size (VmHWM) so far; read it before the process exits."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
        assert match, f"no VmHWM in /proc/{self.pid}/status"
        return int(match[1]) / 1024

    async def wait_for_log(self, pattern: str | re.Pattern[str], timeout: float = 30) -> None:
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        try:
            async with asyncio.timeout(timeout):
                while not regex.search(self.log()):
                    if not self.running():
                        raise AssertionError(
                            f"{self.name} exited ({self.process.returncode}) before logging "
                            f"{regex.pattern!r}:\n{self.log()}"
                        )
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise AssertionError(
                f"{self.name} did not log {regex.pattern!r} within {timeout}s:\n{self.log()}"
            ) from None

    async def wait_exit(self, timeout: float = 30) -> int:
        """The exit code; fails the test if the process is still running after ``timeout``."""
        try:
            async with asyncio.timeout(timeout):
                return await self.process.wait()
        except TimeoutError:
            raise AssertionError(
                f"{self.name} still running {timeout}s later:\n{self.log()}"
            ) from None


Spawn = Callable[..., Awaitable[Proc]]


async def wait_healthy(proc: Proc, timeout: float = 30) -> None:
    url = f"http://127.0.0.1:{proc.port}/healthz"
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            if not proc.running() or time.monotonic() > deadline:
                raise AssertionError(f"{proc.name} never answered {url}:\n{proc.log()}")
            await asyncio.sleep(0.1)


@dataclass
class Result:
    code: int
    out: str
    err: str


async def run_cli(*args: str, env: dict[str, str], timeout: float = 120, **kw: Any) -> Result:
    """Run ``python -m bgworker ARGS`` to completion (without blocking the event loop, where
    the tests' SMTP sink runs)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bgworker",
        *args,
        env=env,
        cwd=kw.pop("cwd", REPO),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        **kw,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.communicate()
        raise AssertionError(f"bgworker {' '.join(args)} still running after {timeout}s") from None
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


async def run_on_terminal(*args: str, env: dict[str, str], timeout: float = 120) -> Result:
    """Run ``python -m bgworker ARGS`` as at a shell prompt: standard input and output on a
    pseudo-terminal (100 columns), stderr apart. ``out`` is what the terminal received."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    terminal_env = {k: v for k, v in env.items() if k != "NO_COLOR"} | {"TERM": "xterm"}
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bgworker",
            *args,
            env=terminal_env,
            cwd=REPO,
            stdin=slave,
            stdout=slave,
            stderr=asyncio.subprocess.PIPE,
        )
    finally:
        os.close(slave)

    def screen() -> bytes:
        received = []
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: nobody has the terminal open any more
                break
            if not chunk:
                break
            received.append(chunk)
        return b"".join(received)

    try:
        async with asyncio.timeout(timeout):
            out, (_, err) = await asyncio.gather(asyncio.to_thread(screen), proc.communicate())
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"bgworker {' '.join(args)} still running after {timeout}s") from None
    finally:
        os.close(master)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))
