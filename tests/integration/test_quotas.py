"""Quotas (issue 21): a tenant's requests per hour or day. POST /requests answers 429 with
Retry-After and a problem naming the quota; an AMQP request over it is deferred (a new
message on a retry queue, nothing recorded) or failed with reason over_quota."""

from __future__ import annotations

import json
import uuid
from typing import Any

import aio_pika
import pytest
from pydantic import SecretStr

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.messaging import broker, topology
from tests.helpers import Publish, StartServer, StartWorker, wait_for_status, wait_until
from tests.integration.downloads import fetch

KEY = "k-" + "q" * 30

pytestmark = pytest.mark.usefixtures("amqp")


async def _post(base: str, body: dict[str, Any]) -> tuple[int, dict[str, str], dict[str, Any]]:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
    status, hdrs, content = await fetch(
        "POST", f"{base}/requests", data=json.dumps(body).encode(), headers=headers
    )
    return status, dict(hdrs), json.loads(content)


async def test_post_over_the_hourly_quota_is_429_with_retry_after_and_a_problem(
    settings: settings_mod.Settings, db: store.Store, start_server: StartServer
) -> None:
    settings.web.api_keys = [SecretStr(KEY)]
    settings.fairness.quota_per_hour = 2
    base = await start_server()
    bodies = [{"id": str(uuid.uuid4()), "file_type": "blob", "tenant": "acme"} for _ in range(3)]
    for body in bodies[:2]:
        status, _, answer = await _post(base, body)
        assert status == 202, answer
    status, hdrs, problem = await _post(base, bodies[2])
    assert status == 429
    assert hdrs["Content-Type"].startswith("application/problem+json")
    assert 3500 <= int(hdrs["Retry-After"]) <= 3600
    assert problem["quota"] == "per_hour" and problem["limit"] == 2 and problem["used"] == 2
    assert problem["tenant"] == "acme" and problem["status"] == 429
    # An accepted id asked again is answered from its record, never refused.
    status, _, _ = await _post(base, bodies[0])
    assert status == 202
    # Another tenant has its own quota.
    other = {"id": str(uuid.uuid4()), "file_type": "blob", "tenant": "other"}
    assert (await _post(base, other))[0] == 202


async def test_amqp_over_quota_fails_with_reason_over_quota(
    settings: settings_mod.Settings,
    db: store.Store,
    publish: Publish,
    start_worker: StartWorker,
    amqp: aio_pika.abc.AbstractChannel,
) -> None:
    settings.fairness.quota_per_day = 2
    settings.fairness.over_quota = "fail"
    await start_worker()
    ok = [await publish("blob", {"size": 5, "seed": i}, tenant="t") for i in range(2)]
    for e in ok:
        await wait_for_status(db, e.id, "ready")
    over = await publish("blob", {"size": 5, "seed": 9}, tenant="t")
    row = await wait_for_status(db, over.id, "failed")
    assert row.failure_reason == "over_quota"

    async def dead_lettered() -> bool:
        topo = topology.Topology(settings.namespace)
        return await broker.queue_depth(amqp, topo.dead_queue) == 1

    await wait_until(dead_lettered, timeout=10)
    # The refused one does not count against the quota, and once there is room again (here:
    # the quota raised) the same id published again supersedes it and runs.
    settings.fairness.quota_per_day = 3
    await start_worker()
    again = await publish("blob", {"size": 5, "seed": 9}, tenant="t", id=over.id)
    assert again.id == over.id
    await wait_for_status(db, over.id, "ready", timeout=20)


async def test_amqp_over_quota_waits_on_a_retry_queue_unrecorded(
    settings: settings_mod.Settings,
    db: store.Store,
    publish: Publish,
    start_worker: StartWorker,
    amqp: aio_pika.abc.AbstractChannel,
) -> None:
    settings.fairness.quota_per_hour = 1
    w = await start_worker()
    first = await publish("blob", {"size": 5}, tenant="t")
    await wait_for_status(db, first.id, "ready")
    over = await publish("blob", {"size": 5, "seed": 1}, tenant="t")

    async def deferred() -> bool:
        return w.outcomes["over_quota"] >= 1

    await wait_until(deferred, timeout=10)
    assert await db.requests.get_request(over.id) is None  # not recorded while it waits
    topo = topology.Topology(settings.namespace, tuple(settings.worker.retry_delays_seconds))
    longest = max(settings.worker.retry_delays_seconds)
    # The window (an hour) is longer than any retry tier: it waits on the longest one.
    assert await broker.queue_depth(amqp, topo.retry_queue(longest)) == 1
    assert await broker.queue_depth(amqp, topo.dead_queue) == 0
