"""The AsyncAPI 3.0 document of bgworker's messaging (``schemas/asyncapi.json``).

Written by ``bgworker schemas export`` next to the JSON Schemas and checked by the same
``--check``. It is built from the modules that define the wire, so it cannot say other
names than they use: exchange and queue names and types from ``topology``, routing keys
from ``topology``, header names and limits from ``wire``, dead-letter reasons from
``states``. Payloads reference the generated JSON Schema files (``$ref`` relative to the
document), so an event's rules are stated once.

Names are shown for the default namespace (``bgworker``): with ``BGWORKER_NAMESPACE=ns``
every ``bgworker.`` prefix is ``ns.`` (``info.description`` says so).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

from bgworker.contract import bundles, events, schedules, states
from bgworker.messaging import topology, wire

FILE_NAME: Final = "asyncapi.json"
DEFAULT_NAMESPACE: Final = "bgworker"
# https://github.com/asyncapi/bindings/tree/master/amqp (AMQP 0-9-1 bindings).
AMQP_BINDING_VERSION: Final = "0.3.0"
# The JSON Schema files are draft 2020-12; the keywords they use ($defs only as a container
# of $ref targets, anyOf, const, pattern, not, propertyNames) mean the same in draft-07,
# the JSON Schema format every AsyncAPI tool must read (AsyncAPI 3.0, Multi Format Schema).
SCHEMA_FORMAT: Final = "application/schema+json;version=draft-07"
PERSISTENT: Final = 2

_DESCRIPTION: Final = f"""\
bgworker builds files in the background: producers publish `FileRequested` to the requests
exchange, workers build the file, record its state in PostgreSQL, email a signed link and
announce `FileReady` or `FileFailed` on the events exchange. A message that can never be
processed goes to the dead-letter queue with headers saying why.

Names are shown for the default namespace `{DEFAULT_NAMESPACE}`: with
`BGWORKER_NAMESPACE=ns`, every exchange and queue name starts with `ns.` instead. Every
message is JSON in UTF-8 (`content_type` `application/json`) and persistent
(`delivery_mode` 2). Payload schemas are the JSON Schema files beside this document."""


def _exchange(name: str, kind: str) -> dict[str, Any]:
    return {
        "name": name,
        "type": kind,
        "durable": True,
        "autoDelete": False,
        "vhost": "/",
    }


def _routing_channel(
    key: str, exchange: dict[str, Any], message: str, description: str
) -> dict[str, Any]:
    return {
        "address": key,
        "description": description,
        "messages": {message: {"$ref": f"#/components/messages/{message}"}},
        "bindings": {
            "amqp": {
                "is": "routingKey",
                "exchange": exchange,
                "bindingVersion": AMQP_BINDING_VERSION,
            }
        },
    }


def _payload(model: str) -> dict[str, Any]:
    return {"schemaFormat": SCHEMA_FORMAT, "schema": {"$ref": f"./{model}.json"}}


def _message_binding(message_type: str | None) -> dict[str, Any]:
    # The AMQP `type` property; delivery mode is an operation's binding, not a message's.
    binding: dict[str, Any] = {"bindingVersion": AMQP_BINDING_VERSION}
    if message_type is not None:
        binding["messageType"] = message_type
    return {"amqp": binding}


def _text_header(description: str, limit: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "string", "description": description}
    if limit is not None:
        out["maxLength"] = limit
    return out


_TRACE_HEADERS: Final = {
    wire.TRACEPARENT: _text_header("W3C Trace Context, set only when tracing is on"),
    wire.TRACESTATE: _text_header("W3C Trace Context, set only when tracing is on"),
}


def _messages() -> dict[str, Any]:
    reasons = sorted(r.value for r in states.Reason)
    return {
        "FileRequested": {
            "name": "FileRequested",
            "title": "A file is requested",
            "summary": "Published by a producer; `id` is the idempotency key.",
            "description": (
                "AMQP properties: `message_id` is the request id, `type` `FileRequested`. "
                f"At most {events.MAX_BODY_BYTES} bytes (`x-bgworker-max-body-bytes`)."
            ),
            "contentType": wire.JSON,
            "headers": {
                "type": "object",
                "properties": {
                    **_TRACE_HEADERS,
                    wire.REPLAY: {
                        "type": "integer",
                        "minimum": 1,
                        "description": "Set by `bgworker dlq replay`: times replayed",
                    },
                },
            },
            "payload": _payload("FileRequested"),
            "bindings": _message_binding("FileRequested"),
        },
        "BundleRequested": {
            "name": "BundleRequested",
            "title": "Several files are requested together",
            "summary": "Published by a producer; `id` is the idempotency key of the bundle.",
            "description": (
                "AMQP properties: `message_id` is the bundle id. Its parts are built as "
                "requests of their own, part i under the id uuid5(id, str(i)); one email when "
                "the last part ended (docs/bundles.md)."
            ),
            "contentType": wire.JSON,
            "payload": _payload("BundleRequested"),
            "bindings": _message_binding("BundleRequested"),
        },
        "CancelRequested": {
            "name": "CancelRequested",
            "title": "A producer cancels a request",
            "summary": "Idempotent; cancel wins, even when it comes before the request.",
            "description": (
                "AMQP properties: `message_id` `<id>.cancel`, `type` `CancelRequested`. A "
                "queued or retrying request ends cancelled, a running one stops at its next "
                "lease renewal and never becomes ready; an id not seen yet is recorded "
                "cancelled, so its request is never built. A ready or failed one is unchanged."
            ),
            "contentType": wire.JSON,
            "payload": _payload("CancelRequested"),
            "bindings": _message_binding("CancelRequested"),
        },
        "FileReady": {
            "name": "FileReady",
            "title": "A file is ready",
            "summary": "Once per request whose file is downloadable.",
            "description": "AMQP `message_id` is `<id>.file.ready`, one per request.",
            "contentType": wire.JSON,
            "payload": _payload("FileReady"),
            "bindings": _message_binding("FileReady"),
        },
        "FileFailed": {
            "name": "FileFailed",
            "title": "A request failed",
            "summary": "Once per request that ends in `failed`.",
            "description": "AMQP `message_id` is `<id>.file.failed`, one per request.",
            "contentType": wire.JSON,
            "payload": _payload("FileFailed"),
            "bindings": _message_binding("FileFailed"),
        },
        "DeadLetter": {
            "name": "DeadLetter",
            "title": "A message that can never be processed",
            "summary": "The original body, unchanged, with headers saying why.",
            "description": (
                "The body is the message as it was received: usually a `FileRequested`, but "
                "possibly not JSON at all (that may be why it is here). Letters RabbitMQ "
                "dead-lettered itself (delivery limit) carry its `x-death` header instead of "
                "the `x-bgworker-*` ones. `bgworker dlq` lists, shows and replays them."
            ),
            "contentType": wire.JSON,
            "headers": {
                "type": "object",
                "properties": {
                    wire.REASON: {"type": "string", "enum": reasons},
                    wire.ERROR_CLASS: _text_header("the exception class"),
                    wire.ERROR: _text_header("the error, for operators", wire.ERROR_LIMIT),
                    wire.ATTEMPTS: {"type": "integer", "minimum": 0},
                    wire.WORKER: _text_header("the worker that dead-lettered it"),
                    wire.FAILED_AT: {"type": "string", "format": "date-time"},
                    wire.ROUTING_KEY: _text_header("the routing key it arrived with"),
                    wire.TRACEBACK: _text_header("when a handler raised", wire.TRACEBACK_LIMIT),
                    wire.X_DEATH: {"type": "array", "description": "set by RabbitMQ"},
                },
            },
            "payload": {"description": "any bytes: the original message body"},
            "bindings": _message_binding(None),
        },
    }


def document() -> dict[str, Any]:
    """The AsyncAPI 3.0 document, as a JSON-ready dict."""
    topo = topology.Topology(DEFAULT_NAMESPACE)
    requests = _exchange(topo.requests_exchange, "direct")
    events_exchange = _exchange(topo.events_exchange, "topic")
    dead_queue = {
        "name": topo.dead_queue,
        "durable": True,
        "exclusive": False,
        "autoDelete": False,
        "vhost": "/",
    }
    channels = {
        "requests": _routing_channel(
            topology.REQUESTED_KEY,
            requests,
            "FileRequested",
            f"The requests exchange, bound to the work queue `{topo.work_queue}` "
            f"(quorum, delivery limit {topology.DELIVERY_LIMIT}, unless classic).",
        ),
        "bundles": _routing_channel(
            topology.BUNDLE_KEY,
            requests,
            "BundleRequested",
            f"The requests exchange, bound to the work queue `{topo.work_queue}` too: the "
            "worker that takes a bundle records it and publishes its parts as requests.",
        ),
        "cancels": _routing_channel(
            topology.CANCEL_KEY,
            requests,
            "CancelRequested",
            f"The requests exchange, bound to the cancel queue `{topo.cancel_queue}` (quorum "
            "unless classic), which every worker consumes whatever its free slots.",
        ),
        "fileReady": _routing_channel(
            topology.READY_KEY,
            events_exchange,
            "FileReady",
            "The events exchange (topic): bind a queue with `file.ready`, `file.*` or `#`.",
        ),
        "fileFailed": _routing_channel(
            topology.FAILED_KEY,
            events_exchange,
            "FileFailed",
            "The events exchange (topic): bind a queue with `file.failed`, `file.*` or `#`.",
        ),
        "deadLetters": {
            "address": topo.dead_queue,
            "description": (
                f"The dead-letter queue, bound to the fanout exchange `{topo.dead_exchange}`."
            ),
            "messages": {"DeadLetter": {"$ref": "#/components/messages/DeadLetter"}},
            "bindings": {
                "amqp": {
                    "is": "queue",
                    "queue": dead_queue,
                    "bindingVersion": AMQP_BINDING_VERSION,
                }
            },
        },
    }
    confirmed = {"amqp": {"deliveryMode": PERSISTENT, "bindingVersion": AMQP_BINDING_VERSION}}
    operations = {
        "receiveFileRequested": _operation(
            "receive",
            "requests",
            "FileRequested",
            "Workers consume requests and ack once the claim is committed in PostgreSQL. "
            "Producers publish them persistent and mandatory, with publisher confirms.",
            {"amqp": {"ack": True, "bindingVersion": AMQP_BINDING_VERSION}},
        ),
        "receiveBundleRequested": _operation(
            "receive",
            "bundles",
            "BundleRequested",
            "A worker records the bundle and its parts and publishes the parts (confirmed) in "
            "one transaction, then acks; an invalid bundle is dead-lettered whole.",
            {"amqp": {"ack": True, "bindingVersion": AMQP_BINDING_VERSION}},
        ),
        "receiveCancelRequested": _operation(
            "receive",
            "cancels",
            "CancelRequested",
            "Workers apply a cancel in PostgreSQL, then ack. A body that is not a "
            "CancelRequested is logged and dropped.",
            {"amqp": {"ack": True, "bindingVersion": AMQP_BINDING_VERSION}},
        ),
        "sendFileReady": _operation("send", "fileReady", "FileReady", "Announced once.", confirmed),
        "sendFileFailed": _operation(
            "send", "fileFailed", "FileFailed", "Announced once.", confirmed
        ),
        "sendDeadLetter": _operation(
            "send",
            "deadLetters",
            "DeadLetter",
            "Published with publisher confirms; the delivery is acked only after.",
            confirmed,
        ),
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "bgworker",
            "version": str(events.SCHEMA_VERSION),
            "description": _DESCRIPTION,
        },
        "defaultContentType": wire.JSON,
        "servers": {
            "rabbitmq": {
                "host": "127.0.0.1:5672",
                "protocol": "amqp",
                "protocolVersion": "0.9.1",
                "description": "BGWORKER_AMQP_URL (this is its default).",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": _messages()},
    }


def _operation(
    action: str,
    channel: str,
    message: str,
    description: str,
    bindings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "action": action,
        "channel": {"$ref": f"#/channels/{channel}"},
        "description": description,
        "messages": [{"$ref": f"#/channels/{channel}/messages/{message}"}],
    }
    if bindings is not None:
        out["bindings"] = bindings
    return out


def text() -> str:
    """The document as committed: stable, so it diffs cleanly."""
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"


def schema_files() -> dict[str, str]:
    """Every file of ``schemas/`` (``bgworker schemas export``): the events' JSON Schemas and
    this document, which references them."""
    return {**bundles.json_schemas(), **schedules.json_schemas(), FILE_NAME: text()}


def export(target: Path, *, check: bool) -> list[str]:
    """Write the files of ``schema_files`` that differ into ``target`` (naming each), or with
    ``check`` only list them: the names that were (or would be) out of date."""
    target.mkdir(parents=True, exist_ok=True)
    stale = []
    for name, text in schema_files().items():
        path = target / name
        if (path.read_text() if path.exists() else None) == text:
            continue
        stale.append(name)
        if not check:
            path.write_text(text)
            print(f"wrote {path}")
    return stale
