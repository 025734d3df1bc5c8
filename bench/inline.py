"""``python -m bench.inline [MiB]``: an inline build (bgworker.producing) streamed over a
loopback socket by aiohttp, async and plain-def handlers; prints MiB/s and the process's
peak RSS growth, which stays flat however big the file (bounded memory). No services:
nothing is published."""

from __future__ import annotations

import asyncio
import resource
import sys
import time
import uuid

import aiohttp
from aiohttp import web

from bgworker import handlers, producing, settings, storage
from bgworker.contract import events
from bgworker.messaging import publisher

CHUNK = b"x" * 256 * 1024
registry = handlers.Registry()


def _chunks(ctx: handlers.JobContext) -> int:
    size = ctx.criteria["mib"]
    assert isinstance(size, int)
    return size * 4


@registry.handler("async_bytes", estimate=lambda criteria: 0)
async def async_bytes(ctx: handlers.JobContext, out: storage.FileWriter) -> None:
    for _ in range(_chunks(ctx)):
        await out.write(CHUNK)


@registry.handler("sync_bytes", estimate=lambda criteria: 0)
def sync_bytes(ctx: handlers.JobContext, out: storage.SyncFileWriter) -> None:
    for _ in range(_chunks(ctx)):
        out.write(CHUNK)


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def main(mib: int) -> None:
    # Never connected: every request here is built inline (the estimates say 0).
    pub = publisher.Publisher("amqp://unused/")
    producer = producing.Producer(settings.Settings(), registry, pub, threshold=1)

    async def export(request: web.Request) -> web.StreamResponse:
        event = events.FileRequested(
            id=uuid.uuid4(), file_type=request.match_info["type"], criteria={"mib": mib}
        )
        return await producing.aiohttp_response(request, await producer.request(event))

    app = web.Application()
    app.router.add_get("/{type}", export)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    async with aiohttp.ClientSession() as session:
        for file_type in ("async_bytes", "sync_bytes"):
            before, started, received = _peak_mib(), time.perf_counter(), 0
            async with session.get(f"http://{host}:{port}/{file_type}") as response:
                async for block in response.content.iter_chunked(1024 * 1024):
                    received += len(block)
            seconds = time.perf_counter() - started
            assert received == mib * 1024 * 1024
            print(
                f"{file_type:12} {mib} MiB in {seconds:.2f} s = {mib / seconds:7.1f} MiB/s, "
                f"peak RSS {_peak_mib():.0f} MiB (+{_peak_mib() - before:.0f})"
            )
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 512))
