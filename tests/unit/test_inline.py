"""The inline build's stream (bgworker.producing.inline) when its reader goes away with the queue
full.

A response closed early closes the stream, which stops and cancels the build. The build
must not then wait to hand an end mark to a full queue nobody reads any more: that hung
the close for ever (wsgiref's request thread, then the server's shutdown).
"""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from bgworker import handlers
from bgworker import settings as settings_mod
from bgworker.contract import events
from bgworker.producing import inline
from bgworker.storage import FileWriter, SyncFileWriter
from tests.helpers import event_body

CHUNKS = 20  # far more than the queue holds
DEPTH = 2

registry = handlers.Registry()
stopped: dict[str, threading.Event] = {}


@registry.handler("fast_async")
async def fast_async(ctx: handlers.JobContext, out: FileWriter) -> None:
    try:
        for _ in range(CHUNKS):
            await out.write(b"a" * inline.CHUNK_SIZE)
    finally:
        stopped["fast_async"].set()


@registry.handler("fast_sync")
def fast_sync(ctx: handlers.JobContext, out: SyncFileWriter) -> None:
    try:
        for _ in range(CHUNKS):
            out.write(b"s" * inline.CHUNK_SIZE)
    finally:
        stopped["fast_sync"].set()


@pytest.mark.parametrize("file_type", ["fast_async", "fast_sync"])
async def test_closing_a_stream_whose_queue_is_full_stops_the_handler_and_returns(
    file_type: str,
) -> None:
    stopped[file_type] = threading.Event()
    registration = registry.find(file_type)
    assert registration is not None
    event = events.FileRequested.model_validate(event_body(file_type=file_type))
    ctx = handlers.JobContext(
        event,
        worker_id="inline",
        logger=logging.getLogger("test_inline"),
        settings=settings_mod.Settings(),
        resources=handlers.NO_RESOURCES,
    )
    chunks = inline.stream(registration, ctx, DEPTH, None)
    assert await anext(chunks) == (b"a" if file_type == "fast_async" else b"s") * inline.CHUNK_SIZE
    await asyncio.sleep(0.5)  # the handler fills the queue and waits on it
    closing = asyncio.ensure_future(chunks.aclose())
    # asyncio.wait, not wait_for: the stream swallows a cancel, so wait_for would "succeed".
    done, _ = await asyncio.wait({closing}, timeout=10)
    assert closing in done, "closing the stream hung on its full queue"
    assert await asyncio.to_thread(stopped[file_type].wait, 10)
