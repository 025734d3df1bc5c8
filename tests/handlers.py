"""Handlers used by the tests (``tests.handlers:registry``), deterministic given criteria."""

from __future__ import annotations

import asyncio
import random

from bgworker import handlers, storage

registry = handlers.Registry()

CHUNK = 1024 * 1024


def blob_bytes(size: int, seed: int) -> bytes:
    """What ``blob`` writes, for tests to compare against (small sizes only)."""
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        out += rng.randbytes(min(CHUNK, size - len(out)))
    return bytes(out)


@registry.handler("blob")
async def blob(ctx: handlers.JobContext, out: storage.FileWriter) -> None:
    size = int(ctx.criteria.get("size", 1024))  # type: ignore[arg-type]
    rng = random.Random(int(ctx.criteria.get("seed", 0)))  # type: ignore[arg-type]
    written = 0
    while written < size:
        n = min(CHUNK, size - written)
        await out.write(rng.randbytes(n))
        written += n
        ctx.report_progress(written, size)


@registry.handler("flaky")
async def flaky(ctx: handlers.JobContext, out: storage.FileWriter) -> None:
    """Fails its first ``fail_times`` attempts, then succeeds."""
    if ctx.attempt <= int(ctx.criteria.get("fail_times", 2)):  # type: ignore[arg-type]
        raise RuntimeError(f"flaky failure on attempt {ctx.attempt}")
    await out.write(f"ok after {ctx.attempt} attempts\n".encode())


@registry.handler("always_fails", max_attempts=3)
async def always_fails(ctx: handlers.JobContext, out: storage.FileWriter) -> None:
    await out.write(b"partial bytes that must never be visible")
    raise RuntimeError("this handler always fails")


@registry.handler("permanent")
async def permanent(ctx: handlers.JobContext, out: storage.FileWriter) -> None:
    raise handlers.PermanentError("criteria make no sense")


@registry.handler("slow")
async def slow(ctx: handlers.JobContext, out: storage.FileWriter) -> None:
    seconds = float(ctx.criteria.get("seconds", 1.0))  # type: ignore[arg-type]
    steps = max(1, int(seconds / 0.05))
    for i in range(steps):
        await asyncio.sleep(seconds / steps)
        ctx.report_progress(i + 1, steps)
    await out.write(f"slept {seconds}s\n".encode())


@registry.handler("crash", max_attempts=2)
async def crash(ctx: handlers.JobContext, out: storage.FileWriter) -> None:
    """Kills its own process, as a handler exhausting memory would (subprocess tests only)."""
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


@registry.handler("fail_after")
async def fail_after(ctx: handlers.JobContext, out: storage.FileWriter) -> None:
    """Writes, waits ``seconds``, then fails (``permanent``: with a PermanentError)."""
    await out.write(b"partial")
    await asyncio.sleep(float(ctx.criteria.get("seconds", 1.0)))  # type: ignore[arg-type]
    if ctx.criteria.get("permanent"):
        raise handlers.PermanentError("failed for good after a while")
    raise RuntimeError("failed after a while")
