"""Inline or delay (bgworker.producing): small files stream from the producer's own web app
without a message; big ones are published and their status link returned. aiohttp, and
Django under a real WSGI server (wsgiref), both over loopback sockets."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
import wsgiref.simple_server
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aio_pika
import aiohttp
import pytest
from aiohttp import web

from bgworker import handlers, producing
from bgworker import settings as settings_mod
from bgworker.contract import events
from bgworker.messaging import publisher, topology
from tests import dedupe_handlers, django_app
from tests.helpers import AMQP_URL, StartServer, StartWorker, wait_until

THRESHOLD = 1000  # rows: report's estimate is criteria["rows"]
pytestmark = pytest.mark.timeout(90)
REGISTRY = "tests.dedupe_handlers:registry"


@pytest.fixture
async def serving(
    settings: settings_mod.Settings, start_server: StartServer
) -> settings_mod.Settings:
    """bgworker's server is up and the settings' public URL points to it, so a status link
    the producer returns can be followed."""
    settings.handlers.append(REGISTRY)
    settings.web.public_url = await start_server()
    return settings


@pytest.fixture
async def aiohttp_app(
    serving: settings_mod.Settings, amqp: aio_pika.abc.AbstractChannel
) -> AsyncIterator[str]:
    """A producer's aiohttp app: POST /export {"file_type", "run", "rows"}. Its base URL."""
    registry = handlers.load([REGISTRY])
    async with publisher.Publisher(
        AMQP_URL, namespace=serving.namespace, queue_type=serving.queue_type
    ) as pub:
        producer = producing.Producer(serving, registry, pub, threshold=THRESHOLD)

        async def export(request: web.Request) -> web.StreamResponse:
            body = await request.json()
            event = events.FileRequested(
                id=uuid.uuid4(),
                file_type=body["file_type"],
                criteria={k: body[k] for k in ("run", "rows", "pad", "fail_at") if k in body},
            )
            return await producing.aiohttp_response(request, await producer.request(event))

        app = web.Application()
        app.router.add_post("/export", export)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
        await runner.cleanup()


class _Quiet(wsgiref.simple_server.WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def django_server(
    serving: settings_mod.Settings, amqp: aio_pika.abc.AbstractChannel
) -> Iterator[str]:
    """tests/django_app.py under wsgiref in a thread, with a SyncProducer. Its base URL."""
    from django.core.wsgi import get_wsgi_application

    django_app.setup()
    registry = handlers.load([REGISTRY])
    with producing.SyncProducer(serving, registry, threshold=THRESHOLD) as producer:
        django_app.PRODUCER["value"] = producer
        server = wsgiref.simple_server.make_server(
            "127.0.0.1", 0, get_wsgi_application(), handler_class=_Quiet
        )
        thread = threading.Thread(target=server.serve_forever, name="wsgiref", daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{server.server_port}"
        server.shutdown()
        server.server_close()
        thread.join(10)


async def _queued(channel: aio_pika.abc.AbstractChannel, namespace: str) -> int:
    queue = await channel.declare_queue(topology.Topology(namespace).work_queue, passive=True)
    count = queue.declaration_result.message_count
    assert count is not None
    return count


async def _published(
    serving: settings_mod.Settings,
    amqp: aio_pika.abc.AbstractChannel,
    status: int,
    headers: dict[str, str],
    body: bytes,
) -> str:
    """The answer of a delayed request: 202, its status link (in Location too), and the
    request in the work queue. Returns the link."""
    assert status == 202, body
    answer = json.loads(body)
    assert answer["inline"] is False and headers["Location"] == answer["status_url"]
    assert answer["status_url"].startswith(f"{serving.web.public_url}/status/")
    assert await _queued(amqp, serving.namespace) == 1
    return str(answer["status_url"])


async def _ready_by_link(status_url: str) -> None:
    async with aiohttp.ClientSession() as session:

        async def ready() -> bool:
            async with session.get(status_url, headers={"Accept": "application/json"}) as r:
                return r.status == 200 and (await r.json())["status"] == "ready"

        await wait_until(ready)


async def _call(method: str, url: str, **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session, session.request(method, url, **kwargs) as r:
        return r.status, dict(r.headers), await r.read()


@pytest.mark.parametrize("file_type", ["report", "report_sync"])
async def test_aiohttp_inline_under_the_threshold_streams_without_a_message(
    settings: settings_mod.Settings,
    amqp: aio_pika.abc.AbstractChannel,
    aiohttp_app: str,
    file_type: str,
) -> None:
    run = uuid.uuid4().hex
    rows = THRESHOLD  # at the threshold: still inline
    status, headers, body = await _call(
        "POST", f"{aiohttp_app}/export", json={"file_type": file_type, "run": run, "rows": rows}
    )
    assert status == 200
    assert body == dedupe_handlers.rows_of({"run": run, "rows": rows})
    assert headers["Content-Disposition"].startswith("attachment")
    assert headers.get("Transfer-Encoding") == "chunked"  # streamed, no Content-Length
    assert dedupe_handlers.CALLS[run] == 1
    assert await _queued(amqp, settings.namespace) == 0


async def test_aiohttp_delays_above_the_threshold_and_the_link_becomes_ready(
    serving: settings_mod.Settings,
    amqp: aio_pika.abc.AbstractChannel,
    aiohttp_app: str,
    start_worker: StartWorker,
) -> None:
    run = uuid.uuid4().hex
    status, headers, body = await _call(
        "POST",
        f"{aiohttp_app}/export",
        json={"file_type": "report_sync", "run": run, "rows": THRESHOLD + 1},
    )
    status_url = await _published(serving, amqp, status, headers, body)
    assert dedupe_handlers.CALLS[run] == 0  # nothing built here
    await start_worker()
    await _ready_by_link(status_url)
    assert dedupe_handlers.CALLS[run] == 1


async def test_a_client_that_goes_away_stops_the_inline_handler(
    aiohttp_app: str, amqp: aio_pika.abc.AbstractChannel, settings: settings_mod.Settings
) -> None:
    """Bounded memory: the handler runs ahead of the response by at most the queue, so a
    client that reads one chunk and leaves gets its handler stopped at a later write."""
    run = uuid.uuid4().hex
    # ~10 MB, more than the socket buffers between the two can hold.
    payload = {"file_type": "report_sync", "run": run, "rows": THRESHOLD, "pad": 10_000}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{aiohttp_app}/export", json=payload) as response:
            assert response.status == 200
            await response.content.readexactly(1024)
        # Leaving the block closes the connection with most of the body unread.
    await wait_until(lambda: run in dedupe_handlers.STOPPED)
    assert dedupe_handlers.CALLS[run] == 1
    assert await _queued(amqp, settings.namespace) == 0


async def test_an_inline_handler_failing_before_its_first_byte_answers_500(
    aiohttp_app: str, amqp: aio_pika.abc.AbstractChannel, settings: settings_mod.Settings
) -> None:
    """No 200 goes out before the handler has written: a handler that fails at once is a
    server error the client can see, not an empty "file" with a 200."""
    payload = {"file_type": "report_broken", "run": uuid.uuid4().hex, "rows": 5, "fail_at": 0}
    status, _headers, _body = await _call("POST", f"{aiohttp_app}/export", json=payload)
    assert status == 500
    assert await _queued(amqp, settings.namespace) == 0


async def test_an_inline_handler_failing_mid_stream_cuts_the_response(aiohttp_app: str) -> None:
    """After the first byte the status is sent: the error must reach the client as a body
    that does not end properly (no last chunk), never as a complete-looking short file."""
    payload = {"file_type": "report_broken", "run": uuid.uuid4().hex, "rows": 50, "fail_at": 20}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{aiohttp_app}/export", json=payload) as response:
            assert response.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await response.read()


async def test_an_inline_handler_past_its_time_limit_is_ended(aiohttp_app: str) -> None:
    """The file type's time limit holds inline as in a worker, even for a handler that
    never writes: the request ends with a 500 instead of hanging."""
    payload = {"file_type": "report_hang", "run": uuid.uuid4().hex, "rows": 5}
    timeout = aiohttp.ClientTimeout(total=30)  # far past the 1 s limit: a hang fails here
    status, _headers, _body = await _call(
        "POST", f"{aiohttp_app}/export", json=payload, timeout=timeout
    )
    assert status == 500


async def test_an_inline_stream_closed_before_it_is_read_stops_the_handler(
    settings: settings_mod.Settings,
) -> None:
    """The handler starts in ``producer.request`` (its first chunk is awaited there), so a
    response that is closed without being read (the client left before the headers went
    out) must stop it, not leave it blocked on the full queue."""
    registry = handlers.load([REGISTRY])
    unused = publisher.Publisher(AMQP_URL, namespace=settings.namespace)  # inline: no publish
    producer = producing.Producer(settings, registry, unused, threshold=THRESHOLD)
    run = uuid.uuid4().hex
    criteria: dict[str, Any] = {"run": run, "rows": THRESHOLD, "pad": 10_000}  # ~10 MB
    event = events.FileRequested(id=uuid.uuid4(), file_type="report_sync", criteria=criteria)
    decision = await producer.request(event)
    assert isinstance(decision, producing.Inline)
    await decision.chunks.aclose()
    await wait_until(lambda: run in dedupe_handlers.STOPPED)


async def test_django_inline_and_delayed_over_wsgi(
    serving: settings_mod.Settings,
    amqp: aio_pika.abc.AbstractChannel,
    django_server: str,
    start_worker: StartWorker,
) -> None:
    small, big = uuid.uuid4().hex, uuid.uuid4().hex
    status, headers, body = await _call("GET", f"{django_server}/export?run={small}&rows=300")
    assert status == 200, body
    assert body == dedupe_handlers.rows_of({"run": small, "rows": 300})
    assert "Content-Length" not in headers  # streamed
    assert await _queued(amqp, serving.namespace) == 0

    status, headers, body = await _call(
        "GET", f"{django_server}/export?run={big}&rows={THRESHOLD * 2}&file_type=report"
    )
    status_url = await _published(serving, amqp, status, headers, body)
    assert dedupe_handlers.CALLS[small] == 1 and dedupe_handlers.CALLS[big] == 0
    await start_worker()
    await _ready_by_link(status_url)
    assert dedupe_handlers.CALLS[big] == 1


async def test_django_inline_handler_failing_at_once_answers_500(django_server: str) -> None:
    run = uuid.uuid4().hex
    url = f"{django_server}/export?run={run}&rows=5&file_type=report_broken"
    status, _headers, _body = await _call("GET", url)
    assert status == 500


async def test_a_wsgi_client_that_goes_away_stops_the_inline_handler(django_server: str) -> None:
    """wsgiref closes the response iterable when the client is gone (PEP 3333): that close
    must reach the handler on the producer's loop."""
    run = uuid.uuid4().hex
    url = f"{django_server}/export?run={run}&rows={THRESHOLD}&pad=10000"  # ~10 MB
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as response:
            assert response.status == 200
            await response.content.readexactly(1024)
    await wait_until(lambda: run in dedupe_handlers.STOPPED)
    assert dedupe_handlers.CALLS[run] == 1


async def test_without_an_estimate_the_request_is_published(
    serving: settings_mod.Settings, amqp: aio_pika.abc.AbstractChannel
) -> None:
    registry = handlers.load(["tests.handlers:registry"])  # "blob" declares no estimate
    async with publisher.Publisher(
        AMQP_URL, namespace=serving.namespace, queue_type=serving.queue_type
    ) as pub:
        producer = producing.Producer(serving, registry, pub, threshold=10**9)
        event = events.FileRequested(id=uuid.uuid4(), file_type="blob", criteria={})
        decision = await producer.request(event)
    assert isinstance(decision, producing.Delayed) and decision.request_id == event.id
    assert await _queued(amqp, serving.namespace) == 1
    with pytest.raises(handlers.UnknownFileTypeError):
        await producer.request(event.model_copy(update={"file_type": "nope"}))


async def test_starlette_inline_and_delayed_under_uvicorn(
    serving: settings_mod.Settings,
    amqp: aio_pika.abc.AbstractChannel,
    unused_tcp_port: int,
) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    registry = handlers.load([REGISTRY])
    async with publisher.Publisher(
        AMQP_URL, namespace=serving.namespace, queue_type=serving.queue_type
    ) as pub:
        producer = producing.Producer(serving, registry, pub, threshold=THRESHOLD)

        async def export(request: Request) -> Response:
            query = request.query_params
            criteria = {"run": query["run"], "rows": int(query["rows"])}
            file_type = query.get("file_type", "report")
            event = events.FileRequested(id=uuid.uuid4(), file_type=file_type, criteria=criteria)
            return producing.starlette_response(await producer.request(event))

        app = Starlette(routes=[Route("/export", export)])
        config = uvicorn.Config(app, host="127.0.0.1", port=unused_tcp_port, log_level="warning")
        server = uvicorn.Server(config)
        serve = asyncio.create_task(server.serve(), name="uvicorn")
        try:
            await wait_until(lambda: server.started)
            base = f"http://127.0.0.1:{unused_tcp_port}"
            small, big = uuid.uuid4().hex, uuid.uuid4().hex
            status, headers, body = await _call("GET", f"{base}/export?run={small}&rows=200")
            assert status == 200
            assert body == dedupe_handlers.rows_of({"run": small, "rows": 200})
            assert headers["Content-Disposition"].startswith("attachment")
            assert await _queued(amqp, serving.namespace) == 0
            status, headers, body = await _call(
                "GET", f"{base}/export?run={big}&rows={THRESHOLD + 1}"
            )
            await _published(serving, amqp, status, headers, body)
            assert dedupe_handlers.CALLS[small] == 1 and dedupe_handlers.CALLS[big] == 0
            # A handler failing before its first byte: an error status, not a broken 200.
            broken = f"{base}/export?run={uuid.uuid4().hex}&rows=5&file_type=report_broken"
            status, _headers, _body = await _call("GET", broken)
            assert status == 500
        finally:
            server.should_exit = True
            await serve


async def test_sync_producer_connect_failure_raises_and_leaves_no_thread() -> None:
    """A broker that refuses the connection: the constructor raises the connect error at
    once (not a timeout) and its private loop thread is gone, as for ``SyncPublisher``."""

    def loop_threads() -> int:
        return sum(t.name == "bgworker-producer" for t in threading.enumerate())

    wrong_port = settings_mod.Settings(amqp_url="amqp://guest:guest@127.0.0.1:1/")
    before = loop_threads()
    with pytest.raises(Exception) as info:
        await asyncio.to_thread(
            producing.SyncProducer, wrong_port, handlers.Registry(), threshold=THRESHOLD, timeout=10
        )
    assert not isinstance(info.value, TimeoutError)  # refused at once, not after a timeout
    assert isinstance(info.value, ConnectionError), repr(info.value)
    assert loop_threads() == before
