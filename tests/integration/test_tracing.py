"""With tracing on and an in-memory exporter, one trace links publish, claim, handler,
email and download. Skipped when the ``tracing`` extra is not installed (`make test`
installs it)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import aiohttp
import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.cli.smtp_sink import SmtpSink
from bgworker.contract import states
from bgworker.observe import tracing
from tests import helpers


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.enable(provider)
    yield exporter
    tracing.disable()
    provider.shutdown()


def _text(mail: object) -> str:
    body = mail.get_body(preferencelist=("plain",))  # type: ignore[attr-defined]
    return str(body.get_content())


async def test_one_trace_from_publish_to_download(
    spans: InMemorySpanExporter,
    settings: settings_mod.Settings,
    db: store.Store,
    publish: helpers.Publish,
    start_worker: helpers.StartWorker,
    start_server: helpers.StartServer,
    smtp_sink: SmtpSink,
) -> None:
    settings.tracing.enabled = True
    base = await start_server()
    settings.web.public_url = base  # read by the worker's dispatcher for the email's link
    await start_worker()
    event = await publish("blob", {"size": 1000}, requester={"email": "ann@example.com"})
    await helpers.wait_for_status(db, event.id, states.Status.READY)
    [mail] = await smtp_sink.wait_for(1, timeout=30)
    link = helpers.must_match(r"http://\S+/download/\S+", _text(mail)).group(0)
    async with aiohttp.ClientSession() as http, http.get(link) as response:
        assert response.status == 200
        await response.read()

    def named(name: str) -> ReadableSpan:
        [found] = [s for s in spans.get_finished_spans() if s.name == name]
        return found

    await helpers.wait_until(lambda: len({s.name for s in spans.get_finished_spans()}) >= 6)
    chain = {n: named(n) for n in ("publish", "job", "claim", "handler", "email", "download")}
    trace_ids = {s.context.trace_id for s in chain.values() if s.context is not None}
    assert len(trace_ids) == 1, {n: s.context for n, s in chain.items()}

    # Parent links: publish -> job -> claim, handler; job -> email; job -> download.
    def parent(name: str) -> int | None:
        span = chain[name]
        return span.parent.span_id if span.parent is not None else None

    def own(name: str) -> int:
        context = chain[name].context
        assert context is not None
        return int(context.span_id)

    assert parent("job") == own("publish")
    for child in ("claim", "handler", "email", "download"):
        assert parent(child) == own("job"), child
    assert chain["handler"].attributes == {"bgworker.file_type": "blob", "bgworker.attempt": 1}


def test_tracing_off_imports_no_opentelemetry() -> None:
    """A worker's modules, imported and used with tracing off, load no opentelemetry."""
    code = (
        "import sys\n"
        "from bgworker import cli, worker\n"
        "from bgworker.cli import main\n"
        "from bgworker.effects import outbox\n"
        "from bgworker.messaging import broker\n"
        "from bgworker.observe import tracing\n"
        "from bgworker.worker import jobs\n"
        "from bgworker import web\n"
        "with tracing.span('x'):\n"
        "    assert tracing.carrier() == {}\n"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry')], sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
