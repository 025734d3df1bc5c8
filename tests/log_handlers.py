"""Handlers that log through ``ctx.logger`` (``tests.log_handlers:registry``), for the JSON
log test: one on the event loop, one on a handler thread."""

from __future__ import annotations

from bgworker import handlers, storage

registry = handlers.Registry()


@registry.handler("logs_async")
async def logs_async(ctx: handlers.JobContext, out: storage.FileWriter) -> None:
    ctx.logger.info("handler of %s writing", ctx.id)
    await out.write(b"async\n")


@registry.handler("logs_sync")
def logs_sync(ctx: handlers.JobContext, out: storage.SyncFileWriter) -> None:
    ctx.logger.info("handler of %s writing on its thread", ctx.id)
    out.write(b"sync\n")
