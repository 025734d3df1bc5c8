"""``bgworker serve --workers N``: N server processes sharing one port, and their parent.

Each child is today's single-process ``bgworker serve`` started with ``--parent PID``: it
binds the port with SO_REUSEPORT (``web.TCPSite(..., reuse_port=True)``; aiohttp's docs:
the kernel lets every endpoint that set the flag bind the same port) and the kernel
spreads new connections over the N listening sockets. Children share nothing in memory;
each has its own PostgreSQL pool. Their metrics meet in a directory the parent makes for
the run (``metrics.shared_dir``): a scrape of any child sums them all.

The parent only supervises: it forwards SIGTERM/SIGINT to every child (the first signal
drains each child's in-flight requests, a second one makes them exit at once, as for a
single ``serve``) and exits 0 once every child exited 0 after a stop. A child that exits
when nobody asked it to is reported, the others are stopped gracefully, and the parent
exits with that child's status (1 if it had none): a restart belongs to the process
manager (systemd, compose ``restart:``), which sees the whole server fail instead of a
parent that quietly restarts a child in a loop (a database away, a bad setting).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from bgworker.observe import metrics

log = logging.getLogger(__name__)

# The command a child runs: the single-process server on the shared port.
CHILD_ARGS: Final = ("-m", "bgworker", "serve", "--workers", "1", "--parent")


class Supervisor:
    def __init__(self, workers: int, host: str, port: int) -> None:
        self.workers = workers
        parent = str(os.getpid())  # the child binds with SO_REUSEPORT and watches this pid
        self.argv = [sys.executable, *CHILD_ARGS, parent, "--host", host, "--port", str(port)]
        self.children: list[asyncio.subprocess.Process] = []
        self.stopping = False
        self.status = 0
        self.metrics_dir = Path()  # set by run

    async def run(self) -> int:
        """Start the children and wait for all of them; the parent's exit status."""
        with metrics.shared_dir() as self.metrics_dir:
            return await self._run()

    async def _run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._forward, sig)
        try:
            for _ in range(self.workers):
                self.children.append(await self._spawn())
            log.info(
                "serve: %d processes on port %s (pids %s)",
                self.workers,
                self.argv[-1],
                " ".join(str(c.pid) for c in self.children),
            )
            waits = {
                asyncio.create_task(c.wait(), name=f"serve-child-{c.pid}"): c for c in self.children
            }
            while waits:
                done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    self._exited(waits.pop(task), task.result())
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self._reap()
        return self.status

    async def _spawn(self) -> asyncio.subprocess.Process:
        """A child inherits stdout/stderr, the environment (its settings) and the signal
        mask: SIGTERM/SIGINT stay blocked (pending, not lost) until it has installed its
        graceful handlers (cli._install_signals), so a stop sent while it starts up is a
        clean stop, not a death by the default action."""
        stop_signals = {signal.SIGTERM, signal.SIGINT}
        old = signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
        try:
            # Its own process group: a terminal's Ctrl-C (SIGINT to the foreground group)
            # reaches the parent only, which passes it on once; reaching the children too,
            # it would count as their second signal and cut the drain short.
            return await asyncio.create_subprocess_exec(
                *self.argv, process_group=0, env=metrics.process_env(self.metrics_dir)
            )
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def _exited(self, child: asyncio.subprocess.Process, code: int) -> None:
        metrics.process_gone(child.pid, self.metrics_dir)
        if not self.stopping:
            log.error(
                "serve: process %d exited (status %d) while serving; stopping the others",
                child.pid,
                code,
            )
            self.status = code if code > 0 else 1
            self._signal_all(signal.SIGTERM)
        elif code != 0:
            log.error("serve: process %d exited with status %d while stopping", child.pid, code)
            self.status = self.status or (code if code > 0 else 1)

    def _forward(self, sig: signal.Signals) -> None:
        log.info("serve: %s received, passing it to %d processes", sig.name, len(self.children))
        self._signal_all(sig)

    def _signal_all(self, sig: signal.Signals) -> None:
        self.stopping = True
        for child in _running(self.children):
            child.send_signal(sig)

    async def _reap(self) -> None:
        """On the way out (an error or a cancelled parent), no child outlives the parent."""
        for child in _running(self.children):
            child.kill()
        for child in self.children:
            await child.wait()


def port_taken(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be served (something already accepts connections there),
    or None. SO_REUSEPORT lets a
    second ``serve --workers N`` (an old deployment left running, a second unit) bind the
    same port without an error, and the kernel would then silently split the connections
    between two servers that may run different code or settings; a single ``serve`` (no
    SO_REUSEPORT) gets "address already in use" instead. Asked before the children bind."""
    wildcard = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}
    target = wildcard.get(host, host)
    try:
        with socket.create_connection((target, port), timeout=1.0):
            pass
    except OSError:  # refused, unreachable, timed out: nobody listens there
        return None
    return (
        f"port {port} on {host} already accepts connections (another server?); --workers "
        "binds with SO_REUSEPORT and would share it silently"
    )


async def watch_parent(parent: int, stop: asyncio.Event, interval: float = 1.0) -> None:
    """In a child: stop (gracefully) once ``parent`` is gone. A parent killed with SIGKILL
    cannot pass anything on, and children left serving on the port would answer with a
    stale configuration and hold it against a restarted server. The pid comes from the
    parent itself (``--parent``): one read here could already see the re-parenting."""
    while not stop.is_set():
        if os.getppid() != parent:  # re-parented: the supervisor died
            log.warning("serve: parent process %d is gone, stopping", parent)
            stop.set()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


def _running(
    children: Sequence[asyncio.subprocess.Process],
) -> list[asyncio.subprocess.Process]:
    return [c for c in children if c.returncode is None]
