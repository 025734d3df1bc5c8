"""The scenarios' handler (``tests.scenarios.handlers:registry``): a small deterministic file
built over a chosen time, so faults land on jobs in flight; each build that runs to
completion appends one line to the host's build record, which the harness reads to prove
that no file was built twice to completion.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import time
from typing import Final

from bgworker import handlers, storage

registry = handlers.Registry()

FILE_TYPE: Final = "scenario"
# The file each worker process appends its completed builds to (one JSON line each, written
# with one O_APPEND write: lines from processes sharing the file never interleave).
BUILDS_ENV: Final = "SCENARIO_BUILDS_FILE"
STEPS: Final = 4


def content(size: int, seed: int) -> bytes:
    """The bytes a ``scenario`` request's file holds."""
    return random.Random(seed).randbytes(size)


def sha256_of(size: int, seed: int) -> str:
    return hashlib.sha256(content(size, seed)).hexdigest()


def _record(ctx: handlers.JobContext, began: float) -> None:
    path = os.environ.get(BUILDS_ENV)
    if not path:
        return
    line = json.dumps(
        {
            "id": str(ctx.id),
            "attempt": ctx.attempt,
            "worker": ctx.worker_id,
            "began": began,
            "t": time.time(),
        }
    )
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


@registry.handler(FILE_TYPE)
async def scenario(ctx: handlers.JobContext, out: storage.FileWriter) -> None:
    """criteria: size, seed, seconds (the build's length), kind: "ok", "permanent" (fails
    for good), "flaky" (fails its first attempt, then builds)."""
    began = time.time()
    kind = str(ctx.criteria.get("kind", "ok"))
    if kind == "permanent":
        raise handlers.PermanentError("this scenario request is meant to fail")
    if kind == "flaky" and ctx.attempt == 1:
        raise RuntimeError("first attempt of a flaky scenario request")
    size = int(ctx.criteria.get("size", 4096))  # type: ignore[arg-type]
    seed = int(ctx.criteria.get("seed", 0))  # type: ignore[arg-type]
    seconds = float(ctx.criteria.get("seconds", 0.5))  # type: ignore[arg-type]
    data = content(size, seed)
    step = -(-size // STEPS)
    for i in range(0, size, step):
        await asyncio.sleep(seconds / STEPS)
        await out.write(data[i : i + step])
        ctx.report_progress(min(i + step, size), size)
    _record(ctx, began)
