"""Handlers used by the tests (``tests.handlers:registry``), deterministic given criteria."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

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


@registry.handler("slow_first")
async def slow_first(ctx: handlers.JobContext, out: storage.FileWriter) -> None:
    """Sleeps ``seconds`` on its first attempt only: a worker killed while it runs leaves a
    second attempt that ends at once."""
    if ctx.attempt == 1:
        await asyncio.sleep(float(ctx.criteria.get("seconds", 1.0)))  # type: ignore[arg-type]
    await out.write(f"attempt {ctx.attempt}\n".encode())


@registry.handler("crash", max_attempts=2)
async def crash(ctx: handlers.JobContext, out: storage.FileWriter) -> None:
    """Kills its own process, as a handler exhausting memory would (subprocess tests only)."""
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


@registry.handler("fail_after")
async def fail_after(ctx: handlers.JobContext, out: storage.FileWriter) -> None:
    """Writes (``size`` more bytes if given), waits ``seconds``, then fails
    (``permanent``: with a PermanentError)."""
    await out.write(b"partial")
    await out.write(bytes(int(ctx.criteria.get("size", 0))))  # type: ignore[arg-type]
    await asyncio.sleep(float(ctx.criteria.get("seconds", 1.0)))  # type: ignore[arg-type]
    if ctx.criteria.get("permanent"):
        raise handlers.PermanentError("failed for good after a while")
    raise RuntimeError("failed after a while")


# --- Synchronous handlers, time limits, the loop watchdog (tests/integration/
# test_handler_execution.py). What a handler thread saw is kept here, by request id, for the
# tests to read: they run the worker in-process.


@dataclass
class ThreadLog:
    started: threading.Event = field(default_factory=threading.Event)
    returned: threading.Event = field(default_factory=threading.Event)
    raised: str | None = None  # class name of what ended the call, if anything
    thread: str = ""


THREADS: dict[str, ThreadLog] = {}


def _log(ctx: handlers.JobContext) -> ThreadLog:
    entry = THREADS.setdefault(str(ctx.id), ThreadLog())
    entry.thread = threading.current_thread().name
    entry.started.set()
    return entry


@contextmanager
def _recorded(ctx: handlers.JobContext) -> Iterator[None]:
    entry = _log(ctx)
    try:
        yield
    except BaseException as exc:
        entry.raised = type(exc).__name__
        raise
    finally:
        entry.returned.set()


@registry.handler("sync_sleep")
def sync_sleep(ctx: handlers.JobContext, out: storage.SyncFileWriter) -> None:
    """A plain def: half the blob, ``seconds`` of time.sleep (blocking), the other half."""
    with _recorded(ctx):
        size = int(ctx.criteria.get("size", 1024))  # type: ignore[arg-type]
        data = blob_bytes(size, int(ctx.criteria.get("seed", 0)))  # type: ignore[arg-type]
        half = len(data) // 2
        out.write(data[:half])
        ctx.report_progress(1, 2)
        time.sleep(float(ctx.criteria.get("seconds", 1.0)))  # type: ignore[arg-type]
        for start in range(half, len(data), CHUNK // 3):  # several writes, odd sizes
            out.write(data[start : start + CHUNK // 3])
        ctx.report_progress(2, 2)


@registry.handler("hang", time_limit=1.0, max_attempts=2)
async def hang(ctx: handlers.JobContext, out: storage.FileWriter) -> None:
    """A hung await: only the time limit ends it."""
    await out.write(b"partial bytes that must never be visible")
    await asyncio.Event().wait()


@registry.handler("sync_hang", time_limit=1.0, max_attempts=1)
def sync_hang(ctx: handlers.JobContext, out: storage.SyncFileWriter) -> None:
    """Ignores the stop: sleeps ``seconds`` in one blocking call, then tries to write."""
    with _recorded(ctx):
        out.write(b"partial bytes that must never be visible")
        time.sleep(float(ctx.criteria.get("seconds", 3.0)))  # type: ignore[arg-type]
        out.write(b"written after the time limit")


@registry.handler("sync_cooperative", time_limit=1.0, max_attempts=1)
def sync_cooperative(ctx: handlers.JobContext, out: storage.SyncFileWriter) -> None:
    """Computes forever in small steps, checking ``ctx`` between them."""
    with _recorded(ctx):
        while True:
            ctx.check()
            time.sleep(0.02)


@registry.handler("block_loop")
async def block_loop(ctx: handlers.JobContext, out: storage.FileWriter) -> None:
    """The mistake the watchdog is for: blocking code in an async handler."""
    time.sleep(float(ctx.criteria.get("seconds", 1.0)))  # type: ignore[arg-type]  # noqa: ASYNC251
    await out.write(b"blocked the loop\n")


@registry.handler("gate")
async def gate(ctx: handlers.JobContext, out: storage.FileWriter) -> None:
    """Runs until the file named by ``criteria["path"]`` exists: the test opens the gate
    when it is done looking, however slow the machine is."""
    path = Path(str(ctx.criteria["path"]))
    # A file, not an asyncio.Event: the test and the worker need not share a loop.
    while not path.exists():  # noqa: ASYNC110, ASYNC240 (a stat every 50 ms, in a test)
        await asyncio.sleep(0.05)
    await out.write(b"gate opened\n")
