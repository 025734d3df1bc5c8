"""CPU of the shared services during a trial: RabbitMQ (beam.smp) and the PostgreSQL
backends serving the bench database, read from /proc/<pid>/stat like the workers'.

On two cores the broker's and the database's CPU is the workers' throughput, so each
contender's total CPU per job is worker + broker + PostgreSQL. The broker is shared with
everything else on the machine: its figure includes other users' traffic during the
trial (reported as it is; compare contenders within one run, never across runs).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from bench import common


def pids_named(name: str) -> list[int]:
    """Processes called ``name`` in this process's network namespace: the machine's own,
    not those of namespace hosts (the multi-host tests' RabbitMQ nodes are beam.smp too)."""
    here = os.readlink("/proc/self/ns/net")
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == name:
                    if os.readlink(entry / "ns" / "net") == here:
                        out.append(int(entry.name))
    return out


def _cpu_by_pid(pids: list[int]) -> dict[int, float]:
    return {pid: common.cpu_seconds([pid]) for pid in pids}


@dataclass
class ServiceCpu:
    """Start with :meth:`start`, read with :meth:`stop` (before the workers exit: their
    PostgreSQL backends end with them)."""

    admin: asyncpg.Connection  # to another database: its own queries are not counted
    database: str
    exclude: int = 0  # the bench's polling backend
    _broker: dict[int, float] = field(default_factory=dict)
    _pg: dict[int, float] = field(default_factory=dict)
    _commits: int = 0

    async def _backends(self) -> list[int]:
        rows = await self.admin.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> $2",
            self.database,
            self.exclude,
        )
        return [r["pid"] for r in rows]

    async def _commit_count(self) -> int:
        # Transactions committed in the bench database: each autocommit statement is one,
        # so per job this counts PostgreSQL round trips that commit (BEGIN..COMMIT is one).
        await self.admin.execute("SELECT pg_stat_clear_snapshot()")
        value = await self.admin.fetchval(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = $1", self.database
        )
        return int(value or 0)

    async def start(self) -> None:
        self._broker = _cpu_by_pid(pids_named("beam.smp"))
        self._pg = _cpu_by_pid(await self._backends())
        self._commits = await self._commit_count()

    async def cpu(self, jobs: int) -> dict[str, float]:
        """CPU per job since :meth:`start`; call it while the workers still run."""
        broker = _cpu_by_pid(list(self._broker))
        pg = _cpu_by_pid(await self._backends())
        # A backend that appeared during the trial counts from zero (its start is the trial's).
        pg_cpu = sum(v - self._pg.get(pid, 0.0) for pid, v in pg.items())
        broker_cpu = sum(v - self._broker[pid] for pid, v in broker.items())
        return {
            "broker_cpu_ms_per_job": broker_cpu * 1000 / jobs,
            "pg_cpu_ms_per_job": pg_cpu * 1000 / jobs,
        }

    async def commits(self, jobs: int, own: int) -> dict[str, float]:
        """Commits per job since :meth:`start`, minus ``own`` (the bench's polling). Call it
        after the workers exited: a backend flushes its counts on exit, and only about once
        a second while busy."""
        commits = await self._commit_count() - self._commits - own
        return {"pg_commits_per_job": commits / jobs}
