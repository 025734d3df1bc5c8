"""``python -m bench.cli_startup [--runs N]``: how long the command line takes to answer
``--help``, next to Celery's. Printed, never asserted.

Each command is a whole process timed from outside: wall time, and the CPU time (user +
system) the kernel accounted to it. The commands take turns (a round runs each once), so a
machine that slows down mid-run slows them alike; the figures are the median, minimum and
maximum over the rounds, after one warm-up round. Nothing but parsing and printing happens,
so the figure is what a command pays in imports before it can answer. Celery comes with the
``bench`` extra.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Final

BIN: Final = Path(sys.executable).parent
COMMANDS: Final = (
    ("bgworker --help", "bgworker", ("--help",)),
    ("bgworker status --help", "bgworker", ("status", "--help")),
    ("celery --help", "celery", ("--help",)),
)


def _program(name: str) -> str:
    """The venv's own script, else one on PATH."""
    path = BIN / name
    found = str(path) if path.exists() else shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} is not installed (`pip install -e '.[bench]'`)")
    return found


def run_once(argv: list[str]) -> tuple[float, float]:
    """(wall s, CPU s) of one run of ``argv``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def measure(runs: int) -> dict[str, tuple[list[float], list[float]]]:
    argvs = {label: [_program(name), *args] for label, name, args in COMMANDS}
    for argv in argvs.values():  # warm-up: the files in the page cache, .pyc written
        run_once(argv)
    walls: dict[str, list[float]] = {label: [] for label in argvs}
    cpus: dict[str, list[float]] = {label: [] for label in argvs}
    for _ in range(runs):
        for label, argv in argvs.items():
            wall, cpu = run_once(argv)
            walls[label].append(wall)
            cpus[label].append(cpu)
    return {label: (walls[label], cpus[label]) for label in argvs}


def _figure(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def report(results: dict[str, tuple[list[float], list[float]]]) -> str:
    celery_wall = statistics.median(results["celery --help"][0])
    rows = [("command", "wall s median (min-max)", "CPU s median (min-max)", "wall / celery")]
    for label, (walls, cpus) in results.items():
        ratio = f"{statistics.median(walls) / celery_wall:.2f}"
        rows.append((label, _figure(walls), _figure(cpus), ratio))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cli_startup")
    parser.add_argument("--runs", type=int, default=15, help="rounds counted (default 15)")
    args = parser.parse_args()
    print(f"{args.runs} rounds, each command once per round, after one warm-up round")
    print(report(measure(args.runs)))


if __name__ == "__main__":
    main()
