"""Bench handlers for bgworker (``BGWORKER_HANDLERS=bench.handlers:registry``)."""

from __future__ import annotations

import asyncio
import random
from typing import Final

from bench import workload
from bgworker import handlers, storage

registry = handlers.Registry()

CHUNK: Final = 1024 * 1024
_BLOCK: Final = random.Random(1234).randbytes(CHUNK)


def _int(ctx: handlers.JobContext, name: str, default: int) -> int:
    value = ctx.criteria.get(name, default)
    if not isinstance(value, int):
        raise handlers.PermanentError(f"criteria.{name} must be an integer")
    return value


@registry.handler("bench_csv")
async def bench_csv(ctx: handlers.JobContext, out: storage.FileWriter) -> None:
    """The throughput job: the same 10 KiB CSV the other contenders write."""
    await out.write(workload.csv_bytes(_int(ctx, "seed", 0)))


def block(index: int, seed: int) -> bytes:
    """Chunk ``index`` of a ``bench_bytes`` file: a fixed random block, tagged so no two
    chunks (or files with different seeds) are equal."""
    tag = f"{seed:016x}{index:016x}".encode()
    return tag + _BLOCK[len(tag) :]


@registry.handler("bench_bytes")
async def bench_bytes(ctx: handlers.JobContext, out: storage.FileWriter) -> None:
    """``size`` deterministic bytes streamed in 1 MiB chunks (large-file benchmark)."""
    size = _int(ctx, "size", CHUNK)
    seed = _int(ctx, "seed", 0)
    written = index = 0
    while written < size:
        n = min(CHUNK, size - written)
        chunk = block(index, seed)
        await out.write(chunk if n == CHUNK else chunk[:n])
        written += n
        index += 1
        ctx.report_progress(written, size)


@registry.handler("bench_sleep")
async def bench_sleep(ctx: handlers.JobContext, out: storage.FileWriter) -> None:
    """A job that waits ``ms`` milliseconds (an export waiting on its queries: the fairness
    benchmark), then writes one line."""
    await asyncio.sleep(_int(ctx, "ms", 100) / 1000)
    await out.write(b"done\n")
