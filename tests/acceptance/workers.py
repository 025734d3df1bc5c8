"""Worker subprocesses (the real CLI) for fault-injection tests."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from bgworker import handlers, store
from bgworker.contract import events
from bgworker.examples import login_events


class WorkerProcs:
    """Start, kill and stop `python -m bgworker worker` processes; logs go to files."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.killed = 0

    def start(self) -> subprocess.Popen[bytes]:
        with (self.log_dir / f"worker-{len(self.procs)}.log").open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "bgworker", "worker"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        return proc

    @property
    def alive(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.procs if p.poll() is None]

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        self.killed += 1

    def stop_all(self, timeout: float = 60) -> list[int]:
        for p in self.alive:
            p.send_signal(signal.SIGTERM)
        codes = []
        for p in self.procs:
            try:
                codes.append(p.wait(timeout=timeout))
            except subprocess.TimeoutExpired:
                p.kill()
                codes.append(p.wait())
        return codes

    def logs(self) -> str:
        return "\n".join(
            f.read_text(errors="replace")[-3000:] for f in sorted(self.log_dir.glob("worker-*.log"))
        )


class _HashWriter:
    def __init__(self) -> None:
        self.hash = hashlib.sha256()

    async def write(self, data: bytes) -> None:
        self.hash.update(data)


async def expected_sha256(event: events.FileRequested) -> str:
    """Run the real handler in memory: the bytes a correct worker must have stored."""
    import logging

    ctx = handlers.JobContext(event, 1, "expected", logging.getLogger("expected"))
    out = _HashWriter()
    await login_events.login_events(ctx, out)
    return out.hash.hexdigest()


def make_requests(n: int, rows: int) -> list[events.FileRequested]:
    return [
        events.FileRequested(
            id=uuid.uuid4(),
            file_type="login_events",
            criteria={"rows": rows, "seed": i},
            filename=f"logins-{i}.csv",
            content_type="text/csv",
            requester={"email": f"user{i}@example.com"},
        )
        for i in range(n)
    ]


async def verify_all_ready(
    db: store.Store, storage_dir: Path, requests: list[events.FileRequested]
) -> dict[str, Any]:
    """Every request ready with the right bytes on disk; returns counters for the report."""
    from bgworker import storage

    files = storage.LocalStorage(storage_dir)
    attempts: Counter[int] = Counter()
    for event in requests:
        row = await db.requests.get_request(event.id)
        assert row is not None and row.status == "ready", (event.id, row and row.status)
        data = await asyncio.to_thread(files.path(row.storage_key or "").read_bytes)
        digest = hashlib.sha256(data).hexdigest()
        assert digest == row.sha256 == await expected_sha256(event), event.id
        attempts[row.attempts] += 1
    return {"attempts_histogram": dict(attempts), "files_on_disk": count_files(storage_dir)}


def count_files(storage_dir: Path) -> int:
    """Stored files, excluding temp parts (orphans of killed attempts are counted)."""
    return sum(1 for p in storage_dir.rglob("*") if p.is_file() and ".tmp" not in p.parts)
