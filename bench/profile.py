"""``python -m bench profile FILE.folded [--jobs N]``: the top costs in a py-spy profile
taken with ``BENCH_PROFILE`` (raw folded stacks, idle samples included).

Only the event loop's thread counts (stacks under ``asyncio.Runner.run``, which both
asyncio's loop and uvloop run under); import time and idle handler threads do not.
Printed: the share of the loop's samples in the loop itself (asyncio: the selector, i.e.
waiting; uvloop: its C code, waiting *and* its own transport work, which py-spy cannot
tell apart without ``--native``), in socket writes made from Python (asyncio's
transports; uvloop writes in C), and the functions with the most samples including their
callees; with ``--jobs`` (the jobs the profile covered) also milliseconds per job at the
sampling rate.
"""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path
from typing import Final

LOOP: Final = re.compile(r"^Runner\.run \(")
WAIT: Final = ("EpollSelector.select", "run_forever (", "run_until_complete (", "Runner.run (")
WRITE: Final = ("Transport.write (", "UVStream.write", "socket.send", "sendto")


def _frame(f: str) -> str:
    """``name (file:line)`` without the line: one entry per function."""
    name, _, where = f.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if where else name


def summarize(path: Path, top: int = 25, jobs: int = 0, rate: int = 200) -> str:
    total = wait = write = 0
    inclusive: collections.Counter[str] = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not any(LOOP.search(f) for f in frames):
            continue
        n = int(count)
        total += n
        leaf = frames[-1]
        if any(w in leaf for w in WAIT):
            wait += n
        elif any(w in leaf for w in WRITE):
            write += n
        for f in dict.fromkeys(_frame(f) for f in frames):
            inclusive[f] += n
    if not total:
        return f"{path}: no event-loop samples"

    def share(n: int) -> str:
        per_job = f"  {n / rate * 1000 / jobs:6.3f} ms/job" if jobs else ""
        return f"{n / total * 100:5.1f}%{per_job}"

    out = [
        f"{path.name}: {total} loop samples",
        f"{share(wait)}  in the loop itself (asyncio: waiting; uvloop: waiting + C transports)",
        f"{share(write)}  in socket writes from Python (on loopback: the receiver's side too)",
    ]
    busy = [(f, c) for f, c in inclusive.most_common() if c < total]
    skip = ("_run_once", "Handle._run", "run_until_complete", "Runner.run", "runners.py")
    shown = [(f, c) for f, c in busy if not any(s in f for s in skip)][:top]
    out += [f"{share(c)}  {f}" for f, c in shown]
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    p.add_argument("path", type=Path)
    p.add_argument("--jobs", type=int, default=0, help="jobs the profile covered")
    p.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args()
    print(summarize(args.path, args.top, args.jobs, args.rate))


if __name__ == "__main__":
    main()
