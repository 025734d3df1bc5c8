"""Handlers of the dedupe and inline-or-delay tests (``tests.dedupe_handlers:registry``),
which count their builds per ``criteria["run"]`` (a uuid per test)."""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path

from pydantic import JsonValue

from bgworker import handlers, storage

registry = handlers.Registry()

# Builds started, by criteria["run"]: the worker runs in the test's process.
CALLS: collections.Counter[str] = collections.Counter()
STOPPED: set[str] = set()


def rows_of(criteria: dict[str, JsonValue]) -> bytes:
    """What ``report`` writes for these criteria: ``rows`` numbered lines, each padded
    with ``pad`` dots (which the estimate does not count)."""
    count, pad = criteria.get("rows", 10), criteria.get("pad", 0)
    assert isinstance(count, int) and isinstance(pad, int)
    dots = "." * pad
    return b"".join(f"row {i} of {criteria.get('run')}{dots}\n".encode() for i in range(count))


def estimate(criteria: dict[str, JsonValue]) -> float:
    count = criteria.get("rows", 10)
    return float(count) if isinstance(count, int) else 0.0


@registry.handler("report", dedupe_seconds=3600, estimate=estimate)
async def report(ctx: handlers.JobContext, out: storage.FileWriter) -> None:
    """Waits for the file named by ``criteria["gate"]`` when given (the test opens it); with
    ``fail_first``, the first build of a run fails for good (PermanentError) once the gate
    opens."""
    run = str(ctx.criteria.get("run"))
    CALLS[run] += 1
    first = CALLS[run] == 1
    gate = ctx.criteria.get("gate")
    if isinstance(gate, str):
        while not Path(gate).exists():  # noqa: ASYNC110, ASYNC240 (a stat every 50 ms, in a test)
            await asyncio.sleep(0.05)
    if first and ctx.criteria.get("fail_first"):
        raise handlers.PermanentError("the first build of this run fails")
    data = rows_of(ctx.criteria)
    for start in range(0, len(data), 4096):
        await out.write(data[start : start + 4096])


@registry.handler("report_sync", estimate=estimate)
def report_sync(ctx: handlers.JobContext, out: storage.SyncFileWriter) -> None:
    """The same bytes from a plain def (a thread), no dedupe; a run whose writes are
    refused (the response ended) is added to ``STOPPED``."""
    run = str(ctx.criteria.get("run"))
    CALLS[run] += 1
    data = rows_of(ctx.criteria)
    try:
        for start in range(0, len(data), 4096):
            out.write(data[start : start + 4096])
    except handlers.StoppedError:
        STOPPED.add(run)
        raise


@registry.handler("report_broken", estimate=estimate)
async def report_broken(ctx: handlers.JobContext, out: storage.FileWriter) -> None:
    """Writes ``criteria["fail_at"]`` rows of ``report``'s bytes, then raises."""
    fail_at = ctx.criteria.get("fail_at", 0)
    assert isinstance(fail_at, int)
    data = rows_of(ctx.criteria)
    for line in data.splitlines(keepends=True)[:fail_at]:
        await out.write(line)
        await asyncio.sleep(0)
    raise RuntimeError(f"broken after {fail_at} rows")


@registry.handler("report_hang", estimate=estimate, time_limit=1)
async def report_hang(ctx: handlers.JobContext, out: storage.FileWriter) -> None:
    """Awaits something that never comes, never reaching a write (or ``ctx.check()``)."""
    await asyncio.Event().wait()
