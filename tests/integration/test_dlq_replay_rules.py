"""Replay never strands a request, and never runs a cancelled one by accident.

Issue 8: a letter whose row was ``queued``/``retrying`` used to be removed as "in
progress" although no message for the request existed anywhere, so it waited forever; and
a cancelled request was skipped silently. Real RabbitMQ and PostgreSQL throughout.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import aio_pika
import pytest

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.contract import events
from bgworker.messaging import topology
from bgworker.ops.deadletters import actions, queue, reading, rule, selection
from tests import dlq_handlers
from tests.helpers import (
    EventLog,
    Publish,
    StartWorker,
    dead_queue_of,
    get_row,
    wait_for_status,
    wait_until,
)
from tests.integration.console import client, log_in
from tests.integration.letters import Cli, depth, drain, make_letters, wait_depth

pytestmark = pytest.mark.usefixtures("fixable_handler")


async def nothing(*_: object) -> None:
    """A publish that never reaches the broker: the message lost with a broker failure."""


async def dead_letter_from_work_queue(
    amqp: aio_pika.abc.AbstractChannel, settings: settings_mod.Settings, event: events.FileRequested
) -> None:
    """The request's only message leaves the work queue for ``{ns}.dead`` the way the
    broker moves it at a delivery limit: dead-lettered by RabbitMQ itself (x-death)."""
    work = await amqp.get_queue(topology.Topology(settings.namespace).work_queue, ensure=False)
    message = await work.get(no_ack=False)
    assert message is not None and message.message_id == str(event.id)
    await message.reject(requeue=False)
    dead = dead_queue_of(settings)

    async def arrived() -> bool:
        return await depth(amqp, dead) == 1

    await wait_until(arrived)


async def lose_messages(
    amqp: aio_pika.abc.AbstractChannel, settings: settings_mod.Settings
) -> None:
    """No message for any request anywhere: work queue and every retry tier empty."""
    topo = topology.Topology(settings.namespace, tuple(settings.worker.retry_delays_seconds))
    for name in [topo.work_queue, *map(topo.retry_queue, topo.retry_delays_seconds)]:
        await drain(amqp, name)
        assert await depth(amqp, name) == 0


@pytest.mark.parametrize("status", ["retrying", "queued"])
async def test_replay_republishes_a_request_whose_message_is_gone(
    settings: settings_mod.Settings,
    db: store.Store,
    amqp: aio_pika.abc.AbstractChannel,
    publish: Publish,
    start_worker: StartWorker,
    dead_queue: queue.DeadLetterQueue,
    event_log: EventLog,
    cli: Cli,
    status: str,
) -> None:
    dlq_handlers.FIXED["value"] = True
    event = await publish("fixable")
    # A worker claimed it, then its retry (or, at shutdown, its requeue) message was lost.
    claim = await db.requests.record_and_claim(event, 2, "gone-worker", 30)
    assert claim is not None
    if status == "retrying":
        await db.requests.mark_retrying(
            claim,
            error_class="ExportBugError",
            error="boom",
            next_run_at=datetime.now(UTC),
            publish=nothing,
        )
    else:
        assert await db.requests.release(claim, nothing)
    # Its first message reached the delivery limit and was dead-lettered by the broker.
    await dead_letter_from_work_queue(amqp, settings, event)
    await lose_messages(amqp, settings)
    assert (await get_row(db, event.id)).status == status

    code, out, err = await cli("dlq", "replay", str(event.id))
    assert code == 0, err
    assert "replayed 1" in out and "removed from the queue: 1" in out
    assert await depth(amqp, dead_queue.name) == 0
    [action] = await db.dead_letters.list_actions(event.id)
    assert (action["action"], action["detail"]) == ("replay", f"republished: row left {status}")

    await start_worker()
    row = await wait_for_status(db, event.id, "ready")
    await wait_until(lambda: any(k == "file.ready" for k, _ in event_log))
    await wait_depth(amqp, topology.Topology(settings.namespace).work_queue, 0)
    ready = Counter(body["id"] for key, body in event_log if key == "file.ready")
    assert ready == Counter({str(event.id): 1})
    outcomes = [a["outcome"] for a in await db.requests.list_attempts(event.id)]
    assert outcomes.count("ready") == 1 and row.attempts == len(outcomes)


async def test_replay_of_a_cancelled_request_refuses_then_force_runs_it(
    settings: settings_mod.Settings,
    db: store.Store,
    amqp: aio_pika.abc.AbstractChannel,
    publish: Publish,
    start_worker: StartWorker,
    dead_queue: queue.DeadLetterQueue,
    cli: Cli,
) -> None:
    await start_worker()
    [cancelled, flagged] = await make_letters(db, amqp, dead_queue.name, publish, "fixable", 2)
    # One ended cancelled; on the other a cancel arrived while its handler failed for good.
    await db.pool.execute(
        "UPDATE bgworker_requests SET status = 'cancelled', cancel_requested = true WHERE id = $1",
        cancelled,
    )
    await db.pool.execute(
        "UPDATE bgworker_requests SET cancel_requested = true WHERE id = $1", flagged
    )
    dlq_handlers.FIXED["value"] = True

    for request_id in (cancelled, flagged):
        code, out, err = await cli("dlq", "replay", str(request_id))
        assert code == 1
        message = (
            f"request {request_id} was cancelled; "
            "replay with --force to clear the cancel and run it"
        )
        assert message in err and "refused" in out
    code, out, err = await cli("dlq", "replay", "--all", "--dry-run")
    assert code == 0 and "would-refuse 2" in out
    assert await depth(amqp, dead_queue.name) == 2  # both letters kept
    assert (await get_row(db, cancelled)).status == "cancelled"
    assert (await get_row(db, flagged)).status == "failed"

    code, out, err = await cli("dlq", "replay", "--all", "--force")
    assert code == 0, err
    assert "replayed 2" in out and "removed from the queue: 2" in out
    for request_id in (cancelled, flagged):
        row = await wait_for_status(db, request_id, "ready")
        assert not row.cancel_requested and row.attempts == 1
        actions = await db.dead_letters.list_actions(request_id)
        assert [a["action"] for a in actions] == ["skip", "replay"]
        assert actions[-1]["detail"].startswith("forced")
        assert actions[-1]["actor"].startswith("cli:")
    assert await depth(amqp, dead_queue.name) == 0


async def test_console_refuses_a_cancelled_request_unless_forced(
    settings: settings_mod.Settings,
    db: store.Store,
    amqp: aio_pika.abc.AbstractChannel,
    publish: Publish,
    start_worker: StartWorker,
    dead_queue: queue.DeadLetterQueue,
    console: str,
) -> None:
    await start_worker()
    [request_id] = await make_letters(db, amqp, dead_queue.name, publish, "fixable", 1)
    await db.pool.execute(
        "UPDATE bgworker_requests SET status = 'cancelled', cancel_requested = true WHERE id = $1",
        request_id,
    )
    dlq_handlers.FIXED["value"] = True
    async with client() as http:
        token = await log_in(http, console)
        async with http.get(f"{console}/admin/dead-letters/{request_id}") as r:
            page = await r.text()
        assert 'id="force-replay"' in page and "(cancel requested)" in page
        action = {"csrf": token, "action": f"replay:one:{request_id}"}
        async with http.post(f"{console}/admin/dead-letters/action", data=action) as r:
            page = await r.text()
        assert "<b>refused</b> 1" in page and "replay with --force to clear the cancel" in page
        assert await depth(amqp, dead_queue.name) == 1
        async with http.post(
            f"{console}/admin/dead-letters/action", data={**action, "force": "yes"}
        ) as r:
            assert "<b>replayed</b> 1" in await r.text()
    await wait_for_status(db, request_id, "ready")
    [*_, forced] = await db.dead_letters.list_actions(request_id)
    assert forced["detail"].startswith("forced") and forced["actor"] == "web:admin"


async def test_running_request_letter_removed_only_under_a_live_lease(
    settings: settings_mod.Settings,
    db: store.Store,
    amqp: aio_pika.abc.AbstractChannel,
    publish: Publish,
    dead_queue: queue.DeadLetterQueue,
) -> None:
    live = await publish("fixable")
    expired = await publish("fixable")
    await lose_messages(amqp, settings)
    live_claim = await db.requests.record_and_claim(live, 2, "busy-worker", 60)
    dead_claim = await db.requests.record_and_claim(expired, 2, "dead-worker", 0.001)
    assert live_claim is not None and dead_claim is not None
    channel = await dead_queue.connection.channel()
    exchange = await channel.get_exchange(dead_queue.topology.dead_exchange)
    for event in (live, expired):
        body = event.model_dump_json().encode()
        headers: aio_pika.abc.HeadersType = {"x-death": [{"reason": "delivery_limit", "count": 20}]}
        await exchange.publish(
            aio_pika.Message(body, message_id=str(event.id), headers=headers), ""
        )

    report = await actions.replay(dead_queue, db, selection.Selection(everything=True), actor="t")
    by_key = {o.key: o for o in report.outcomes}
    assert by_key[str(live.id)].removed and by_key[str(live.id)].result == "skipped"
    kept = by_key[str(expired.id)]
    assert not kept.removed and "reaper" in kept.detail
    assert [letter.key async for letter in reading.matching(dead_queue)] == [str(expired.id)]
    # Neither request was touched: the live attempt keeps its lease, the reaper owns the other.
    for event, claim in ((live, live_claim), (expired, dead_claim)):
        row = await get_row(db, event.id)
        assert (row.status, row.lease_token) == ("running", claim.lease_token)
    await channel.close()


@pytest.mark.parametrize(
    ("status", "cancel", "lease", "force", "plan"),
    [
        (None, False, False, False, rule.Plan.REPLAY),
        ("failed", False, False, False, rule.Plan.REPLAY),
        ("queued", False, False, False, rule.Plan.REPUBLISH),
        ("retrying", False, False, False, rule.Plan.REPUBLISH),
        ("running", False, True, False, rule.Plan.DROP),
        ("running", False, False, False, rule.Plan.KEEP),
        ("ready", False, False, False, rule.Plan.DROP),
        ("expired", False, False, True, rule.Plan.DROP),
        ("ready", True, False, True, rule.Plan.DROP),  # served: never run twice, even forced
        ("cancelled", False, False, False, rule.Plan.REFUSE),
        ("retrying", True, False, False, rule.Plan.REFUSE),
        ("failed", True, False, False, rule.Plan.REFUSE),
        ("running", True, True, False, rule.Plan.REFUSE),
        ("cancelled", True, False, True, rule.Plan.FORCE),
        ("retrying", True, False, True, rule.Plan.FORCE),
    ],
)
def test_the_replay_rule(
    status: str | None, cancel: bool, lease: bool, force: bool, plan: rule.Plan
) -> None:
    decision = rule.decide("r1", status, cancel_requested=cancel, lease_live=lease, force=force)
    assert decision.plan is plan
    # A letter leaves the queue only if the request is runnable afterwards (republished,
    # confirmed) or has nothing left to run (served, or running under a live lease).
    assert decision.removes == (plan.publishes or plan is rule.Plan.DROP)
    assert decision.removes != (plan in (rule.Plan.KEEP, rule.Plan.REFUSE))
