"""Producers cancel (issue 24, part 1): ``CancelRequested`` on the requests exchange and
``DELETE /requests/{id}`` on the front door, on real RabbitMQ, PostgreSQL and workers.
Both are idempotent and cancel wins: a running request stops and never becomes ready, and a
cancel that comes before its request makes the request end unbuilt when it comes."""

from __future__ import annotations

import json
import urllib.parse
import uuid
from pathlib import Path
from typing import Any, Final

import aio_pika
import pytest
from hypothesis import Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from pydantic import SecretStr

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.contract import events
from bgworker.messaging import broker, publisher, topology, wire
from bgworker.observe import metrics
from bgworker.ops.deadletters import actions, queue, selection
from tests.helpers import (
    AMQP_URL,
    Publish,
    StartServer,
    StartWorker,
    event_body,
    stored_keys,
    wait_for_status,
    wait_until,
    work_queue_depth,
)
from tests.integration.downloads import fetch

KEY: Final = "k-" + "c" * 30

pytestmark = pytest.mark.usefixtures("amqp")


async def _cancel(settings: settings_mod.Settings, request_id: uuid.UUID) -> None:
    async with publisher.Publisher(
        AMQP_URL, namespace=settings.namespace, queue_type=settings.queue_type
    ) as pub:
        await pub.cancel(request_id)


async def _delete(base: str, request_id: object, key: str | None = KEY) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    status, _, body = await fetch("DELETE", f"{base}/requests/{request_id}", headers=headers)
    return status, json.loads(body)


async def _post(base: str, body: dict[str, Any]) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    status, _, raw = await fetch("POST", f"{base}/requests", data=json.dumps(body), headers=headers)
    return status, json.loads(raw)


async def test_a_cancel_before_its_request_means_it_is_never_built(
    settings: settings_mod.Settings,
    db: store.Store,
    publish: Publish,
    start_worker: StartWorker,
    amqp: aio_pika.abc.AbstractChannel,
) -> None:
    worker = await start_worker()
    request_id = uuid.uuid4()
    await _cancel(settings, request_id)
    await _cancel(settings, request_id)  # idempotent
    row = await wait_for_status(db, request_id, "cancelled")
    assert row.event == {} and row.cancel_requested and row.attempts == 0

    await publish("blob", {"size": 100}, id=request_id)
    await wait_until(lambda: worker.outcomes["duplicate"] == 1)
    assert await work_queue_depth(amqp, settings.namespace) == 0
    row = await wait_for_status(db, request_id, "cancelled")
    assert row.attempts == 0 and row.storage_key is None
    assert await db.requests.list_attempts(request_id) == []
    assert await stored_keys(settings) == []


async def test_a_cancel_stops_a_running_request_and_wins(
    settings: settings_mod.Settings,
    db: store.Store,
    publish: Publish,
    start_worker: StartWorker,
    tmp_path: Path,
) -> None:
    await start_worker()
    gate = tmp_path / "gate"
    event = await publish("gate", {"path": str(gate)})
    await wait_for_status(db, event.id, "running")
    await _cancel(settings, event.id)
    row = await wait_for_status(db, event.id, "cancelled")
    gate.touch()  # the handler would finish now: too late
    attempts = await db.requests.list_attempts(event.id)
    assert [a["outcome"] for a in attempts] == ["cancelled"]
    assert row.storage_key is None
    await _cancel(settings, event.id)  # once more: nothing changes
    again = await wait_for_status(db, event.id, "cancelled")
    assert again.finished_at == row.finished_at


async def test_a_refused_cancel_body_is_dropped_and_the_worker_goes_on(
    settings: settings_mod.Settings,
    db: store.Store,
    publish: Publish,
    start_worker: StartWorker,
    amqp: aio_pika.abc.AbstractChannel,
) -> None:
    await start_worker()
    before = _invalid_cancels()
    topo = topology.Topology(settings.namespace, queue_type=settings.queue_type)
    for body in (b"{", b"[]", b'{"id": "not-a-uuid"}', b'{"id": 1, "x": 2}'):
        message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        await broker.publish(amqp, topo.requests_exchange, topology.CANCEL_KEY, message)
    event = await publish("blob", {"size": 10})
    await wait_for_status(db, event.id, "ready")
    await wait_until(lambda: _invalid_cancels() == before + 4)
    assert await broker.queue_depth(amqp, topo.cancel_queue) == 0


def _invalid_cancels() -> float:
    return (
        metrics.WORKER.get_sample_value("bgworker_producer_cancels_total", {"outcome": "invalid"})
        or 0.0
    )


@pytest.fixture
def keyed(settings: settings_mod.Settings) -> settings_mod.Settings:
    settings.web.api_keys = [SecretStr(KEY)]
    return settings


async def test_delete_is_idempotent_and_a_cancelled_id_is_never_built(
    keyed: settings_mod.Settings,
    db: store.Store,
    start_server: StartServer,
    start_worker: StartWorker,
) -> None:
    base = await start_server()
    worker = await start_worker()
    body = event_body()
    request_id = uuid.UUID(body["id"])
    assert (await _delete(base, request_id, key=None))[0] == 401
    assert (await _delete(base, request_id, key="k-" + "x" * 30))[0] == 401
    for _ in range(2):
        status, answer = await _delete(base, request_id)
        assert status == 200, answer
        assert answer == {"id": str(request_id), "status": "cancelled", "cancel_requested": True}
    # The request itself comes afterwards, over the front door: accepted, never built.
    status, answer = await _post(base, body)
    assert status == 202 and answer["status"] == "cancelled", answer
    other = await _post(base, event_body())
    assert other[0] == 202
    await wait_for_status(db, uuid.UUID(other[1]["id"]), "ready")
    row = await wait_for_status(db, request_id, "cancelled")
    assert row.attempts == 0 and worker.outcomes["ready"] == 1


async def test_delete_of_a_finished_request_is_refused_and_changes_nothing(
    keyed: settings_mod.Settings,
    db: store.Store,
    publish: Publish,
    start_server: StartServer,
    start_worker: StartWorker,
    tmp_path: Path,
) -> None:
    base = await start_server()
    await start_worker()
    done = await publish("blob", {"size": 10})
    await wait_for_status(db, done.id, "ready")
    status, answer = await _delete(base, done.id)
    assert status == 409 and answer["request_status"] == "ready", answer
    assert (await wait_for_status(db, done.id, "ready")).cancel_requested is False

    gate = tmp_path / "gate"
    running = await publish("gate", {"path": str(gate)})
    await wait_for_status(db, running.id, "running")
    status, answer = await _delete(base, running.id)
    assert status in (200, 202), answer  # 200 when the cancel already took effect
    await wait_for_status(db, running.id, "cancelled")
    gate.touch()
    assert (await _delete(base, running.id))[0] == 200


def _path_segments(n: int) -> list[str]:
    """Hypothesis' idea of what a client may put where the id goes (collected first: the
    test itself is async, on one server)."""
    out: list[str] = []
    strategy = st.one_of(st.text(min_size=1, max_size=60), st.uuids().map(str))

    @hypothesis_settings(max_examples=n, database=None, derandomize=True, phases=[Phase.generate])
    @given(strategy.filter(lambda s: s not in (".", "..")))
    def collect(segment: str) -> None:
        out.append(segment)

    collect()
    return out


async def test_delete_never_fails_on_what_a_client_puts_in_the_path(
    keyed: settings_mod.Settings, db: store.Store, start_server: StartServer
) -> None:
    base = await start_server()
    for segment in _path_segments(60):
        url = f"{base}/requests/{urllib.parse.quote(segment, safe='')}"
        status, _, raw = await fetch("DELETE", url, headers={"Authorization": f"Bearer {KEY}"})
        assert status in (200, 404), (segment, status, raw)
        if status == 200:  # it was a UUID: cancelled before it came
            assert json.loads(raw)["status"] == "cancelled"
            assert (await wait_for_status(db, uuid.UUID(segment), "cancelled")).event == {}


def test_cancel_requested_contract() -> None:
    request_id = uuid.uuid4()
    parsed = events.parse_cancel_requested(json.dumps({"id": str(request_id)}).encode())
    assert parsed.id == request_id
    with pytest.raises(events.InvalidEventError):
        events.parse_cancel_requested(b'{"id": "x"}')


async def test_a_dead_letter_of_a_request_cancelled_before_it_came_is_never_replayed(
    settings: settings_mod.Settings,
    db: store.Store,
    start_worker: StartWorker,
    amqp: aio_pika.abc.AbstractChannel,
) -> None:
    """A request RabbitMQ dead-lettered before any worker recorded it (delivery limit),
    then cancelled by its producer: even ``dlq replay --force`` drops the letter, since
    the placeholder means "never build this"."""
    await start_worker()
    request_id = uuid.uuid4()
    topo = topology.Topology(settings.namespace)
    body = json.dumps({"id": str(request_id), "file_type": "blob"}).encode()
    letter = wire.DeadLetter("delivery_limit", "x-death", "delivered too often", 20)
    message = wire.dead_letter(
        body, letter, worker_id="w", message_id=str(request_id), routing_key=None
    )
    await broker.publish(amqp, topo.dead_exchange, "", message)
    await _cancel(settings, request_id)
    await wait_for_status(db, request_id, "cancelled")
    async with queue.DeadLetterQueue(AMQP_URL, settings.namespace) as dlq:
        chosen = selection.Selection(everything=True)
        report = await actions.replay(dlq, db, chosen, actor="test", force=True)
    [outcome] = report.outcomes
    assert outcome.result == actions.Result.SKIPPED and outcome.removed, outcome
    assert await broker.queue_depth(amqp, topo.dead_queue) == 0
    row = await wait_for_status(db, request_id, "cancelled")
    assert row.event == {} and row.attempts == 0
