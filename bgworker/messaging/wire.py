"""The wire format: every message bgworker publishes and every header it reads back.

Header names are the constants below; nothing else in the package spells them. The
builders return ``aio_pika.Message`` objects; where they go (which exchange, which key) is
``broker``'s and ``topology``'s business.

- ``request``: a ``FileRequested`` body, as a producer publishes it and as bgworker puts it
  back (release, reaper, recovery, retry, dead-letter replay).
- ``dead_letter``: the original body with headers that say why (read by the dead-letter
  tools).
- ``event``: ``FileReady`` / ``FileFailed`` on the events exchange.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, DeliveryMode

from bgworker.contract import events
from bgworker.messaging import topology
from bgworker.observe import tracing

# Dead letters (read back by the dead-letter tools).
REASON: Final = "x-bgworker-reason"
ERROR_CLASS: Final = "x-bgworker-error-class"
ERROR: Final = "x-bgworker-error"
ATTEMPTS: Final = "x-bgworker-attempts"
WORKER: Final = "x-bgworker-worker"
FAILED_AT: Final = "x-bgworker-failed-at"
ROUTING_KEY: Final = "x-bgworker-routing-key"
TRACEBACK: Final = "x-bgworker-traceback"
# A request put back by `bgworker dlq replay`: how many times it was replayed.
REPLAY: Final = "x-bgworker-replay"
# A request's `priority` as the AMQP message priority. RabbitMQ 4 quorum queues map 0-4 to
# normal and 5 and up to high (two levels, served 2:1); a classic work queue is declared
# with x-max-priority topology.MAX_PRIORITY (2), which serves 5 as 2: three strict levels.
PRIORITIES: Final = {"low": 0, "normal": 1, "high": 5}
# Set by RabbitMQ on letters it dead-lettered itself (delivery limit, reject), and on
# quorum-queue redeliveries.
# W3C Trace Context headers: named by tracing (their owner), here beside the others.
TRACEPARENT: Final = tracing.TRACEPARENT
TRACESTATE: Final = tracing.TRACESTATE
X_DEATH: Final = "x-death"
X_DELIVERY_COUNT: Final = "x-delivery-count"

JSON: Final = "application/json"
# Error texts in headers (and in the request row) are cut to these lengths.
ERROR_LIMIT: Final = 1000
TRACEBACK_LIMIT: Final = 2000


@dataclass(frozen=True)
class DeadLetter:
    """Why a message is dead-lettered: the content of its ``x-bgworker-*`` headers."""

    reason: str
    error_class: str
    error: str
    attempts: int
    traceback: str = ""


def shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def header_text(text: str, limit: int) -> str:
    """Valid UTF-8 for an AMQP header: a lone surrogate in an error text (quoting a hostile
    event) would make the dead letter itself unpublishable."""
    return shorten(text, limit).encode("utf-8", "backslashreplace").decode("utf-8")


def request(
    body: dict[str, Any] | bytes,
    request_id: str,
    *,
    replays: int | None = None,
    trace: Mapping[str, str] | None = None,
) -> aio_pika.Message:
    """A ``FileRequested`` message: the recorded event (a dict) or the body as received
    (bytes, sent unchanged). ``replays``: set by `bgworker dlq replay`; ``trace``: the
    ``TRACEPARENT``/``TRACESTATE`` headers of the publishing span (``tracing.carrier``)."""
    raw = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
    headers: dict[str, Any] = dict(trace or {})
    if replays is not None:
        headers[REPLAY] = replays
    return aio_pika.Message(
        raw,
        content_type=JSON,
        delivery_mode=DeliveryMode.PERSISTENT,
        message_id=request_id,
        type="FileRequested",
        headers=headers or None,
        priority=priority_of(body),
    )


def priority_of(body: dict[str, Any] | bytes) -> int:
    """The AMQP priority of a request: its ``priority`` field (``PRIORITIES``), normal when
    it has none or the body is not a JSON object (a dead letter's body may be anything)."""
    event: object = body
    if isinstance(body, bytes):
        try:
            event = json.loads(body)
        except (ValueError, RecursionError):  # not JSON, or nested too deep to read
            return PRIORITIES["normal"]
    named = event.get("priority") if isinstance(event, dict) else None
    return (
        PRIORITIES.get(named, PRIORITIES["normal"])
        if isinstance(named, str)
        else (PRIORITIES["normal"])
    )


def dead_letter(
    body: bytes,
    letter: DeadLetter,
    *,
    worker_id: str,
    message_id: str | None,
    routing_key: str | None,
) -> aio_pika.Message:
    """The original body, with headers that say why (read by `bgworker dlq`)."""
    headers: dict[str, Any] = {
        REASON: letter.reason,
        ERROR_CLASS: letter.error_class,
        ERROR: header_text(letter.error, ERROR_LIMIT),
        ATTEMPTS: letter.attempts,
        WORKER: worker_id,
        FAILED_AT: datetime.now(UTC).isoformat(),
        ROUTING_KEY: routing_key or topology.REQUESTED_KEY,
    }
    if letter.traceback:
        headers[TRACEBACK] = header_text(letter.traceback, TRACEBACK_LIMIT)
    return aio_pika.Message(
        body,
        content_type=JSON,
        delivery_mode=DeliveryMode.PERSISTENT,
        message_id=message_id,
        headers=headers,
    )


def event(model: events.FileReady | events.FileFailed, routing_key: str) -> aio_pika.Message:
    """An outgoing event. Its message id is ``<request id>.<routing key>``: one per request,
    for consumers that deduplicate."""
    return aio_pika.Message(
        model.model_dump_json().encode(),
        content_type=JSON,
        delivery_mode=DeliveryMode.PERSISTENT,
        message_id=f"{model.id}.{routing_key}",
        type=type(model).__name__,
    )


def cancel(model: events.CancelRequested) -> aio_pika.Message:
    """A ``CancelRequested`` (routing key ``topology.CANCEL_KEY``); message id
    ``<request id>.cancel``."""
    return aio_pika.Message(
        model.model_dump_json().encode(),
        content_type=JSON,
        delivery_mode=DeliveryMode.PERSISTENT,
        message_id=f"{model.id}.cancel",
        type="CancelRequested",
    )


def redelivered(message: AbstractIncomingMessage) -> bool:
    """Whether the broker delivered this message before: the AMQP ``redelivered`` flag, or
    a quorum queue's ``x-delivery-count`` (which RabbitMQ sets from the second delivery on:
    https://www.rabbitmq.com/docs/quorum-queues#poison-message-handling)."""
    return bool(message.redelivered) or bool((message.headers or {}).get(X_DELIVERY_COUNT))
