"""Inline or delay: parity with dj-bgfiles' ``FullPattern``, without its file in memory.

A producer that serves a request itself asks the file type's ``estimate`` (registered
next to the handler: criteria -> rows, bytes, whatever unit the threshold is in). At or
under the threshold the handler runs right here and its bytes stream into the response;
above it, or with no estimate, the request is published and the caller gets its status
link:

    producer = Producer(settings, registry, publisher, threshold=10_000)
    decision = await producer.request(events.FileRequested(...))
    return await aiohttp_response(request, decision)  # or django_/starlette_response

Bounded memory: the handler writes into a queue of ``depth`` chunks of at most
``CHUNK_SIZE`` bytes that the response drains; a handler faster than the client waits
(an async one at ``await out.write``, a plain ``def`` on its thread). A response that ends
early (the client went away) stops the handler (``ctx.cancelled``, ``StoppedError`` at its
next write). The handler gets a ``JobContext`` (attempt 1, worker id ``inline``, the
producer's settings and resources) and the writer API it gets in a worker. An inline build
records nothing in PostgreSQL and publishes nothing: no row, link, email or dedupe.
``request`` waits for the first chunk, so a handler that fails before writing raises there;
an error after the first byte can only cut the response short. The time limit is the
worker's (the file type's, else ``TIME_LIMIT_SECONDS``), and as hard (``inline``).

WSGI code (Django, Flask) uses ``SyncProducer``: the same on a private event loop.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from bgworker import handlers
from bgworker import settings as settings_mod
from bgworker.contract import events
from bgworker.handlers import execution
from bgworker.links import tokens
from bgworker.messaging import publisher
from bgworker.producing import inline
from bgworker.web import headers

if TYPE_CHECKING:  # optional frameworks: imported by their adapter only
    from aiohttp import web
    from django.http import HttpResponseBase
    from starlette.responses import Response

log = logging.getLogger(__name__)

# Kept here too: the producer's names for the inline build's bounds.
CHUNK_SIZE: Final = inline.CHUNK_SIZE
DEPTH: Final = inline.DEPTH


@dataclass(frozen=True)
class Inline:
    """Built here: stream ``chunks`` (async) as the response body."""

    request_id: uuid.UUID
    filename: str
    content_type: str
    chunks: AsyncGenerator[bytes, None]
    inline: bool = True


@dataclass(frozen=True)
class SyncInline:
    """``Inline`` for WSGI: ``chunks`` is a plain iterator (close it to stop the handler)."""

    request_id: uuid.UUID
    filename: str
    content_type: str
    chunks: SyncChunks
    inline: bool = True


@dataclass(frozen=True)
class Delayed:
    """Published: a worker builds it; ``status_url`` follows it (JSON, or a page)."""

    request_id: uuid.UUID
    status_url: str
    inline: bool = False


class Producer:
    """Inline under ``threshold``, else publish (``publisher`` connected by the caller)."""

    def __init__(
        self,
        settings: settings_mod.Settings,
        registry: handlers.Registry,
        publisher: publisher.Publisher,
        *,
        threshold: float,
        resources: Mapping[str, Any] = handlers.NO_RESOURCES,
        depth: int = DEPTH,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.publisher = publisher
        self.threshold = threshold
        self.resources = resources
        self.depth = depth

    def estimate(self, event: events.FileRequested) -> float | None:
        """The handler's estimate for the criteria; None: it gives none (always delayed)."""
        registration = self._registration(event)
        return None if registration.estimate is None else registration.estimate(event.criteria)

    async def request(self, event: events.FileRequested) -> Inline | Delayed:
        registration = self._registration(event)
        estimate = self.estimate(event)
        if estimate is not None and estimate <= self.threshold:
            filled = handlers.with_defaults(event, registration)
            ctx = handlers.JobContext(
                filled,
                worker_id="inline",
                logger=logging.getLogger(f"bgworker.producing.inline.{event.file_type}"),
                settings=self.settings,
                resources=self.resources,
            )
            log.info("request %s: built inline (estimate %s)", event.id, estimate)
            assert filled.filename is not None and filled.content_type is not None
            # The worker's rule: the file type's limit, else the default; 0 is none.
            limit = execution.time_limit(registration, self.settings.worker.time_limit_seconds)
            chunks = inline.stream(registration, ctx, self.depth, limit)
            # The first chunk before any answer: a handler that fails before writing raises
            # here, so the view answers an error, not a 200 whose body breaks off at once.
            first = await anext(chunks, None)
            return Inline(
                event.id, filled.filename, filled.content_type, inline.then(first, chunks)
            )
        await self.publisher.publish(event)
        requester = event.requester.id if event.requester else None
        url = tokens.status_url(self.settings, event.id, requester_id=requester)
        log.info("request %s: published (estimate %s)", event.id, estimate)
        return Delayed(event.id, url)

    def _registration(self, event: events.FileRequested) -> handlers.Registration:
        registration = self.registry.find(event.file_type)
        if registration is None:
            raise handlers.UnknownFileTypeError(f"no handler for file_type {event.file_type!r}")
        return registration


class SyncChunks:
    """An async iterator of chunks read from another thread, one chunk at a time."""

    def __init__(self, chunks: AsyncGenerator[bytes, None], loop: publisher.PrivateLoop) -> None:
        self._chunks = chunks
        self._loop = loop

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        # No bound of our own: the handler's time limit bounds how long a chunk can take.
        chunk = self._loop.call(anext_or_none(self._chunks), None)
        if chunk is None:
            raise StopIteration
        return chunk

    def close(self) -> None:
        """Called by the WSGI server when the response ends (early or not)."""
        self._loop.call(self._chunks.aclose(), None)


async def anext_or_none(chunks: AsyncIterator[bytes]) -> bytes | None:
    return await anext(chunks, None)


class SyncProducer:
    """``Producer`` for code without an event loop: a ``SyncPublisher``'s private loop, the
    producer on it. Thread-safe; close it at exit (or use ``with``). Connecting and closing
    wait at most ``timeout`` seconds; a failed connect raises here and leaves no thread."""

    def __init__(
        self,
        settings: settings_mod.Settings,
        registry: handlers.Registry,
        *,
        threshold: float,
        resources: Mapping[str, Any] = handlers.NO_RESOURCES,
        timeout: float = 30.0,
    ) -> None:
        self._publishing = publisher.SyncPublisher(
            settings.amqp_url.get_secret_value(),
            namespace=settings.namespace,
            queue_type=settings.queue_type,
            timeout=timeout,
            name="bgworker-producer",
        )
        self._loop = self._publishing.loop
        self.producer = Producer(
            settings,
            registry,
            self._publishing.publisher,
            threshold=threshold,
            resources=resources,
        )

    def request(self, event: events.FileRequested) -> SyncInline | Delayed:
        # No bound of our own: an inline build's first chunk comes within its time limit.
        decision = self._loop.call(self.producer.request(event), None)
        if isinstance(decision, Delayed):
            return decision
        chunks = SyncChunks(decision.chunks, self._loop)
        return SyncInline(decision.request_id, decision.filename, decision.content_type, chunks)

    def close(self) -> None:
        self._publishing.close()

    def __enter__(self) -> SyncProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _file_headers(decision: Inline | SyncInline) -> dict[str, str]:
    return {
        "Content-Disposition": headers.content_disposition(decision.filename),
        "Cache-Control": "private, no-store",
        "X-Content-Type-Options": "nosniff",
    }


def _delayed_body(decision: Delayed) -> dict[str, Any]:
    return {"inline": False, "id": str(decision.request_id), "status_url": decision.status_url}


async def aiohttp_response(request: web.Request, decision: Inline | Delayed) -> web.StreamResponse:
    """The file streamed (200), or 202 with the status link (also in ``Location``)."""
    from aiohttp import web

    if isinstance(decision, Delayed):
        return web.json_response(
            _delayed_body(decision), status=202, headers={"Location": decision.status_url}
        )
    response = web.StreamResponse(
        headers={"Content-Type": decision.content_type, **_file_headers(decision)}
    )
    # aclosing: a client that goes away ends the loop (or the prepare: the handler already
    # runs, its first chunk in hand) with an error, and the generator's clean-up (stopping
    # the handler) must run now, not when the loop collects it.
    async with contextlib.aclosing(decision.chunks) as chunks:
        await response.prepare(request)
        async for chunk in chunks:
            await response.write(chunk)
    await response.write_eof()
    return response


def django_response(decision: SyncInline | Delayed) -> HttpResponseBase:
    """For a Django view under WSGI (``SyncProducer``): a streaming 200, or 202."""
    from django.http import JsonResponse, StreamingHttpResponse

    if isinstance(decision, Delayed):
        delayed = JsonResponse(_delayed_body(decision), status=202)
        delayed["Location"] = decision.status_url
        return delayed
    response = StreamingHttpResponse(decision.chunks, content_type=decision.content_type)
    for name, value in _file_headers(decision).items():
        response[name] = value
    return response


def starlette_response(decision: Inline | Delayed) -> Response:
    """For Starlette (and FastAPI) endpoints (``Producer``): a streaming 200, or 202."""
    from starlette.responses import JSONResponse, StreamingResponse

    if isinstance(decision, Delayed):
        return JSONResponse(
            _delayed_body(decision), status_code=202, headers={"Location": decision.status_url}
        )
    return StreamingResponse(
        decision.chunks, media_type=decision.content_type, headers=_file_headers(decision)
    )
