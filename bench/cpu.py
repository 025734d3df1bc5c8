"""CPU per part of a deployment, from /proc: each part (workers, broker nodes, PostgreSQL
backends, SeaweedFS, the bench's own harness) is a set of root pids whose process trees are
read (utime + stime of /proc/<pid>/stat) before and after a run, and the machine's busy time
from /proc/stat beside it, so "which part saturates" is an answer from the same readings.

Pids are read again at the end: a process that appeared during the run (a PostgreSQL
backend a pool opened late) counts from zero; one that ended during it loses what it spent
(the bench keeps every measured process alive across the run, so none should).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from bench import common

# Parts that are one Python process each, whose event loop uses at most one core: a
# process of such a part near 1.0 core is that part saturating.
SINGLE_LOOP: Final = frozenset({"workers"})
BUSY: Final = 0.9  # a fraction of a ceiling from which it counts as saturated


def machine_times() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot (/proc/stat's cpu line;
    idle and iowait are not busy)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest in user)
    idle = fields[3] + fields[4]
    return (total - idle) / common.CLK_TCK, total / common.CLK_TCK


@dataclass(frozen=True)
class Snapshot:
    at: float
    machine_busy: float
    # part -> root pid -> CPU seconds of that root's process tree
    trees: dict[str, dict[int, float]]


def snapshot(parts: Mapping[str, Iterable[int]], alone: Iterable[str] = ()) -> Snapshot:
    """``alone``: parts whose pids count without their children (the bench's own process,
    whose children are the workers and the servers measured as parts of their own)."""
    single = set(alone)
    trees = {
        name: {
            root: common.cpu_seconds([root] if name in single else common.tree_pids(root))
            for root in roots
        }
        for name, roots in parts.items()
    }
    busy, _ = machine_times()
    return Snapshot(time.monotonic(), busy, trees)


@dataclass(frozen=True)
class Usage:
    """What each part spent between two snapshots."""

    seconds: float  # wall time between them
    cpu: dict[str, float]  # part -> CPU seconds
    per_root: dict[str, list[float]]  # part -> CPU seconds of each root's tree
    machine_busy: float  # CPU seconds the whole machine was busy (every process on it)
    nproc: int = field(default=os.cpu_count() or 1)

    def cores(self, part: str) -> float:
        return self.cpu[part] / self.seconds

    @property
    def machine_cores(self) -> float:
        return self.machine_busy / self.seconds

    @property
    def other_cores(self) -> float:
        """Cores busy with processes outside every part: other jobs on a shared machine."""
        return max(0.0, (self.machine_busy - sum(self.cpu.values())) / self.seconds)

    def ms_per_job(self, jobs: int) -> dict[str, float]:
        return {part: cpu * 1000 / jobs for part, cpu in self.cpu.items()}


def usage(before: Snapshot, after: Snapshot) -> Usage:
    cpu: dict[str, float] = {}
    per_root: dict[str, list[float]] = {}
    for part, roots in after.trees.items():
        old = before.trees.get(part, {})
        spent = [max(0.0, v - old.get(root, 0.0)) for root, v in roots.items()]
        per_root[part] = spent
        cpu[part] = sum(spent)
    return Usage(after.at - before.at, cpu, per_root, after.machine_busy - before.machine_busy)


def bottleneck(u: Usage, harness: Iterable[str] = ()) -> str:
    """The part that saturates, in words. A single-loop process near one core is its own
    ceiling; otherwise a machine whose cores are all busy is the ceiling, and the part
    using most of them (the harness left out: it would not run in production) is named."""
    skip = set(harness)
    for part in sorted(SINGLE_LOOP & set(u.per_root)):
        loads = [v / u.seconds for v in u.per_root[part]]
        if loads and max(loads) >= BUSY:
            return f"{part}: a process at {max(loads):.2f} of its one core"
    if u.machine_cores >= BUSY * u.nproc:
        mine = {p: u.cores(p) for p in u.cpu if p not in skip}
        top = max(mine, key=lambda p: mine[p])
        return (
            f"machine CPU ({u.machine_cores:.2f} of {u.nproc} cores busy, "
            f"{u.other_cores:.2f} by other jobs); largest part: {top} {mine[top]:.2f} cores"
        )
    return (
        f"none at its ceiling ({u.machine_cores:.2f} of {u.nproc} cores busy): "
        "the jobs wait on round trips (raise concurrency or hosts)"
    )
