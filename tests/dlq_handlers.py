"""A handler whose bug an operator "fixes" between failure and replay (tests of `dlq`)."""

from __future__ import annotations

from bgworker import handlers, storage

registry = handlers.Registry()

# Flipped by a test once the dead letters exist: the deploy of the fix.
FIXED = {"value": False}


class ExportBugError(Exception):
    pass


@registry.handler("fixable", max_attempts=2)
async def fixable(ctx: handlers.JobContext, out: storage.FileWriter) -> None:
    if not FIXED["value"]:
        raise ExportBugError(f"bug in the export (attempt {ctx.attempt})")
    await out.write(f"fixed export, attempt {ctx.attempt}\n".encode())
