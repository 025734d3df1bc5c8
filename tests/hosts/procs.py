"""Processes and commands for the multi-host tooling: run a tool, kill a process group,
reap what was started."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path
from typing import Final

REPO: Final = Path(__file__).resolve().parents[2]


def sh(*argv: str, input: str | None = None) -> str:
    done = subprocess.run(argv, input=input, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


def kill(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL, timeout: float = 30) -> None:
    """Send ``sig`` to the process group ``popen`` started and wait for the process."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    reap(proc, timeout)


def reap(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Wait for ``proc`` and close the pipes it was given."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
