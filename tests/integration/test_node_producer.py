"""The Node.js producer example (``docs/examples/node-producer``) against a real worker,
RabbitMQ and PostgreSQL, in the test's own namespace: a request it publishes becomes
ready, carries the properties bgworker's own publisher sets, and a bad event is refused by
ajv before anything is published. Its validator agrees with the conformance corpus.
Skipped when node is not installed."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from pathlib import Path
from typing import Any, Final

import aio_pika
import pytest

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.messaging import topology
from tests.helpers import (
    AMQP_URL,
    REPO,
    StartWorker,
    node_project,
    wait_for_status,
    work_queue_depth,
)
from tests.unit.test_contract import CASES, body_of

EXAMPLE: Final = REPO / "docs" / "examples" / "node-producer"


@pytest.fixture
def example() -> Path:
    return node_project(EXAMPLE)


async def run_node(
    folder: Path, args: list[str], *, stdin: bytes = b"", env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        "node",
        *args,
        cwd=folder,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(process.communicate(stdin), 120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def node_publish(
    folder: Path, settings: settings_mod.Settings, event: dict[str, Any]
) -> tuple[int, str, str]:
    env = {"AMQP_URL": AMQP_URL, "BGWORKER_NAMESPACE": settings.namespace}
    return await run_node(folder, ["publish.mjs", "-"], stdin=json.dumps(event).encode(), env=env)


async def test_a_request_published_from_node_becomes_ready(
    example: Path,
    settings: settings_mod.Settings,
    db: store.Store,
    amqp: aio_pika.abc.AbstractChannel,
    start_worker: StartWorker,
) -> None:
    # A second queue on the requests exchange sees a copy of what node published.
    copy = await amqp.declare_queue(f"{settings.namespace}.copy", exclusive=True)
    await copy.bind(topology.Topology(settings.namespace).requests_exchange, "file.requested")
    await start_worker()
    request_id = uuid.uuid4()
    event = {
        "id": str(request_id),
        "file_type": "login_events",
        "criteria": {"rows": 4},
        "requester": {"email": "ann@example.com", "language": "fr"},
    }
    code, out, err = await node_publish(example, settings, event)
    assert code == 0, err
    assert out.strip() == str(request_id)
    row = await wait_for_status(db, request_id, "ready")
    assert row.filename == "login_events.csv" and row.size_bytes
    message = await copy.get(no_ack=True, fail=False)
    assert message is not None
    assert message.content_type == "application/json"
    assert message.message_id == str(request_id)
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.type == "FileRequested"
    assert json.loads(message.body) == event


@pytest.mark.parametrize(
    ("change", "location"),
    [
        ({"filename": "invoice\u202efdp.exe"}, "/filename"),  # a bidi control
        ({"criteria": {"rows": "x" * 70_000}}, "/criteria"),  # x-bgworker-max-json-bytes
        ({"criteria": json.loads("[" * 40 + "]" * 40)}, "/criteria"),  # not an object
        ({"criteria": {"a": json.loads('{"b":' * 35 + "1" + "}" * 35)}}, "/criteria"),
        ({"requester": {"email": "ann@example.test"}}, "/requester/email"),  # special-use
        ({"urgency": 1}, "(body)"),  # unknown field
        ({"priority": 1}, "/priority"),  # not a level
    ],
)
async def test_a_bad_event_is_refused_before_publishing(
    example: Path,
    settings: settings_mod.Settings,
    amqp: aio_pika.abc.AbstractChannel,
    change: dict[str, Any],
    location: str,
) -> None:
    event = {"id": str(uuid.uuid4()), "file_type": "login_events", **change}
    code, out, err = await node_publish(example, settings, event)
    assert code == 1, (out, err)
    report = json.loads(err)
    assert location in [e["location"] for e in report["errors"]], report
    assert await work_queue_depth(amqp, settings.namespace) == 0


VALIDATE_ALL: Final = """
import { loadValidator } from './publish.mjs';
const validate = loadValidator();
const bodies = JSON.parse(await new Response(process.stdin).text());
console.log(JSON.stringify(bodies.map((b) => validate(JSON.parse(b)).length === 0)));
"""


async def test_ajv_agrees_with_the_conformance_corpus(example: Path) -> None:
    """Every case that is I-JSON (the rest is for a strict parser, which JSON.parse is
    not): the example's validator accepts exactly the cases the worker accepts."""
    cases = [c for c in CASES if c.get("strict_json", True)]
    bodies = [body_of(c).decode() for c in cases]
    code, out, err = await run_node(
        example,
        ["--input-type=module", "-e", VALIDATE_ALL],
        stdin=json.dumps(bodies).encode(),
    )
    assert code == 0, err
    verdicts = json.loads(out)
    disagree = [
        c["name"] for c, ok in zip(cases, verdicts, strict=True) if ok != (c["expect"] == "accept")
    ]
    assert disagree == []
    assert len(cases) > 60


async def test_a_cancel_published_from_node_stops_the_request(
    example: Path,
    settings: settings_mod.Settings,
    db: store.Store,
    amqp: aio_pika.abc.AbstractChannel,
    start_worker: StartWorker,
) -> None:
    await start_worker()
    request_id = uuid.uuid4()
    env = {"AMQP_URL": AMQP_URL, "BGWORKER_NAMESPACE": settings.namespace}
    code, _, err = await run_node(example, ["publish.mjs", "--cancel", str(request_id)], env=env)
    assert code == 0, err
    row = await wait_for_status(db, request_id, "cancelled")
    assert row.event == {}  # it came first: the request will never be built
    code, _, err = await run_node(example, ["publish.mjs", "--cancel", "nope"], env=env)
    assert code == 1 and "/id" in err
