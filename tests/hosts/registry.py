"""What a run of the multi-host tooling made, written down before it is made, so that
everything can be torn down: at the end of the run, after an exception, and after the run's
process died (``python -m tests.hosts down --all-stale``, also called when a new run starts).

Layout: ``/run/bgworker-hosts/<prefix>/`` holds ``owner`` (pid and start time of the process
that made the run), ``netns`` (namespace names, one a line) and ``pids`` (processes the run
started in the root namespace, such as proxies, as "pid starttime"). The hosts' disks live
in ``/var/tmp/bgworker-hosts/<prefix>/``. A pid is only trusted with its start time, so a
reused pid is never killed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Final

REGISTRY: Final = Path("/run/bgworker-hosts")
DISKS: Final = Path("/var/tmp/bgworker-hosts")
NETNS_ETC: Final = Path("/etc/netns")


def start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/pid/stat), or
    None when it is gone: with the pid it names one process for good."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    return stat.rpartition(")")[2].split()[19]


def alive(pid: int, started: str) -> bool:
    return start_time(pid) == started


class Run:
    """One run's registry directory."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.dir = REGISTRY / prefix
        self.disks = DISKS / prefix

    def create(self) -> None:
        # The directory appears with its owner already in it (a rename), so another run's
        # down_stale never takes a run being made for a dead one.
        REGISTRY.mkdir(parents=True, exist_ok=True)
        making = REGISTRY / f".{self.prefix}"
        making.mkdir()
        pid = os.getpid()
        (making / "owner").write_text(f"{pid} {start_time(pid)}\n")
        making.rename(self.dir)
        self.disks.mkdir(parents=True, exist_ok=True)

    def owner_alive(self) -> bool:
        try:
            pid, started = (self.dir / "owner").read_text().split()
        except (OSError, ValueError):
            return False
        return alive(int(pid), started)

    def add_netns(self, name: str) -> None:
        with (self.dir / "netns").open("a") as f:
            f.write(name + "\n")

    def add_pid(self, pid: int) -> None:
        with (self.dir / "pids").open("a") as f:
            f.write(f"{pid} {start_time(pid)}\n")

    def _lines(self, name: str) -> list[str]:
        try:
            return (self.dir / name).read_text().split("\n")
        except OSError:
            return []

    def netns(self) -> list[str]:
        return [line for line in self._lines("netns") if line]

    def pids(self) -> list[tuple[int, str]]:
        out = []
        for line in self._lines("pids"):
            if line.strip():
                pid, started = line.split()
                out.append((int(pid), started))
        return out

    def down(self) -> None:
        """Kill every process in the run's namespaces and the ones it started outside them,
        delete the namespaces (their veths and bridge go with them), /etc/netns entries, disks
        and the registry entry. Safe to call twice and on a half-made run."""
        for pid, started in self.pids():
            if alive(pid, started):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        namespaces = self.netns()
        # epmd daemonizes out of its node's process group: find everything by namespace.
        for _ in range(3):
            pids = [pid for ns in namespaces for pid in netns_pids(ns)]
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        for ns in namespaces:
            if Path(f"/run/netns/{ns}").exists():
                subprocess.run(["ip", "netns", "delete", ns], check=False, capture_output=True)
            shutil.rmtree(NETNS_ETC / ns, ignore_errors=True)
        shutil.rmtree(self.disks, ignore_errors=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def netns_pids(ns: str) -> list[int]:
    """The processes inside namespace ``ns`` (``ip netns pids``), none if it is gone."""
    if not Path(f"/run/netns/{ns}").exists():
        return []
    done = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
    return [int(p) for p in done.stdout.split()]


def runs() -> list[Run]:
    prefixes: set[str] = set()
    for base in (REGISTRY, DISKS):
        if base.is_dir():
            prefixes.update(p.name for p in base.iterdir() if not p.name.startswith("."))
    return [Run(p) for p in sorted(prefixes)]


def down_stale() -> list[str]:
    """Tear down every run whose owner is gone; returns their prefixes."""
    gone = []
    for run in runs():
        if not run.owner_alive():
            run.down()
            gone.append(run.prefix)
    return gone
