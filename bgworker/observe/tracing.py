"""Optional OpenTelemetry tracing: publish -> job (claim, handler) -> effects -> download.

Off unless :func:`enable` is called (the worker and the server call it when
``BGWORKER_TRACING__ENABLED`` is set; a producer process calls it itself). Off, every
function here is a no-op and nothing imports ``opentelemetry``: the package is the optional
``tracing`` extra, imported only inside :func:`enable` and the functions it turns on.

The trace context crosses RabbitMQ in the W3C Trace Context headers (``traceparent``,
``tracestate``: https://www.w3.org/TR/trace-context/), named here, and crosses
PostgreSQL in the outbox payloads (``TRACE_KEY``), so the dispatcher's email and event
spans and the server's download span join the trace of the job that made them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final, Literal

if TYPE_CHECKING:  # types only: the extra may not be installed
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer

# W3C Trace Context (https://www.w3.org/TR/trace-context/): OpenTelemetry's default
# propagator writes and reads exactly these AMQP header names; set only when tracing is on.
TRACEPARENT: Final = "traceparent"
TRACESTATE: Final = "tracestate"
# The key under which an outbox payload keeps the trace context of the job that wrote it.
TRACE_KEY: Final = "trace"
INSTRUMENTATION: Final = "bgworker"

Kind = Literal["internal", "producer", "consumer", "server"]

_tracer: Tracer | None = None


class TracingUnavailableError(RuntimeError):
    """Tracing was asked for but the ``tracing`` extra is not installed."""


def enabled() -> bool:
    return _tracer is not None


def enable(provider: TracerProvider | None = None) -> None:
    """Turn tracing on in this process. ``provider``: where spans go (tests pass one with
    an in-memory exporter); without one, the global provider (see :func:`configure`).
    Calling it again without a provider keeps the one set."""
    global _tracer
    if _tracer is not None and provider is None:
        return
    try:
        from opentelemetry import trace
    except ImportError as exc:
        raise TracingUnavailableError(
            "BGWORKER_TRACING__ENABLED needs the tracing extra: pip install 'bgworker[tracing]'"
        ) from exc
    _tracer = trace.get_tracer(INSTRUMENTATION, tracer_provider=provider)


def disable() -> None:
    global _tracer
    _tracer = None


def configure(service_name: str) -> None:
    """The process-wide provider for the CLI: spans batched to an OTLP/HTTP collector, set
    up by the standard ``OTEL_EXPORTER_OTLP_*`` variables (default http://localhost:4318),
    and asyncpg queries traced by the maintained instrumentation package."""
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise TracingUnavailableError(
            "BGWORKER_TRACING__ENABLED needs the tracing extra: pip install 'bgworker[tracing]'"
        ) from exc
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    # The instrumentor is untyped: called through Any rather than with a type: ignore.
    instrumentor: Any = AsyncPGInstrumentor
    instrumentor().instrument()
    enable()


# What ``span`` returns while tracing is off: reusable, nothing to set up per block (a
# generator-based context manager per span cost a few microseconds each, several per job).
_NO_SPAN: Final = contextlib.nullcontext()


def span(
    name: str,
    *,
    parent: Mapping[str, Any] | None = None,
    kind: Kind = "internal",
    **attributes: str | int,
) -> contextlib.AbstractContextManager[None]:
    """A span around the block, current inside it (so child spans, :func:`carrier` and
    instrumented libraries see it). ``parent``: a carrier from a message or a payload;
    without one, the current span is the parent."""
    if _tracer is None:
        return _NO_SPAN
    return _span(_tracer, name, parent, kind, attributes)


@contextlib.contextmanager
def _span(
    tracer: Tracer,
    name: str,
    parent: Mapping[str, Any] | None,
    kind: Kind,
    attributes: Mapping[str, str | int],
) -> Iterator[None]:
    from opentelemetry import propagate, trace

    context = propagate.extract(dict(parent)) if parent else None
    with tracer.start_as_current_span(
        name,
        context=context,
        kind=getattr(trace.SpanKind, kind.upper()),
        attributes={f"bgworker.{k}": v for k, v in attributes.items()},
    ):
        yield


def carrier() -> dict[str, str]:
    """The current trace context as W3C headers (empty when off or outside a span)."""
    if _tracer is None:
        return {}
    from opentelemetry import propagate

    headers: dict[str, str] = {}
    propagate.inject(headers)
    return headers


def from_headers(headers: Mapping[str, Any] | None) -> dict[str, str]:
    """The trace headers of an AMQP message, as text (others ignored)."""
    found: dict[str, str] = {}
    for name in (TRACEPARENT, TRACESTATE):
        value = (headers or {}).get(name)
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace")
        if isinstance(value, str):
            found[name] = value
    return found
