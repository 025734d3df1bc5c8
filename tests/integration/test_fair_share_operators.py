"""What operators and requesters see of fair share (issue 21): `bgworker status --tenant`,
the console's tenants, the tenant gauge's bounded labels, and the requester's page of a
parked request."""

from __future__ import annotations

import json
import uuid

import aio_pika
from prometheus_client import generate_latest

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.contract import events
from bgworker.links import tokens
from bgworker.messaging import topology
from bgworker.observe import metrics
from bgworker.worker import sampler
from tests.integration.console import PASSWORD, basic, client
from tests.integration.downloads import fetch
from tests.integration.letters import Cli


async def _park(
    db: store.Store, settings: settings_mod.Settings, tenant: str, n: int
) -> list[uuid.UUID]:
    """One request of ``tenant`` running (cap 1) and ``n`` parked behind it."""
    ids = []
    for _ in range(n + 1):
        event = events.FileRequested(id=uuid.uuid4(), file_type="blob", criteria={}, tenant=tenant)
        await db.fairness.claim_capped(event, 4, "w", 60, settings.fairness)
        ids.append(event.id)
    return ids


async def test_status_tenant_shows_running_parked_and_quota(
    cli: Cli, db: store.Store, settings: settings_mod.Settings
) -> None:
    settings.fairness.tenant_in_flight = 1
    settings.fairness.quota_per_day = 10
    await _park(db, settings, "acme", 2)
    code, out, err = await cli("status", "--tenant", "acme")
    assert code == 0, err
    assert "tenant acme: 1 running (cap 1), 2 parked (waiting for a slot), 0 queued" in out
    assert "quota per day: 3 of 10 used" in out
    code, out, _ = await cli("status", "--tenant", "acme", "--json")
    data = json.loads(out)
    assert (data["running"], data["cap"], data["parked"]) == (1, 1, 2)
    assert data["quotas"]["per_day"]["used"] == 3
    code, out, _ = await cli("status", "--tenant", "nobody")
    assert code == 0 and "tenant nobody: 0 running (cap 1), 0 parked" in out
    code, _, err = await cli("status")
    assert code == 2 and "--tenant" in err


async def test_console_lists_the_busiest_tenants(
    console: str, db: store.Store, settings: settings_mod.Settings
) -> None:
    settings.fairness.tenant_in_flight = 1
    await _park(db, settings, "big", 3)
    await _park(db, settings, "small", 0)
    async with client() as http:
        async with http.get(f"{console}/admin/api/requests", headers=basic("admin", PASSWORD)) as r:
            data = await r.json()
        async with http.get(f"{console}/admin/requests", headers=basic("admin", PASSWORD)) as r:
            page = await r.text()
    tenants = {t["tenant"]: t for t in data["tenants"]}
    assert (tenants["big"]["in_flight"], tenants["big"]["parked"]) == (1, 3)
    assert tenants["big"]["cap"] == 1
    assert data["parked"] == 3
    assert 'id="tenants"' in page and "<td>big</td>" in page


async def test_the_tenant_gauge_names_the_busiest_and_sums_the_rest(
    db: store.Store, settings: settings_mod.Settings, amqp: aio_pika.abc.AbstractChannel
) -> None:
    settings.fairness.tenant_in_flight = 1
    for i in range(metrics.TOP_TENANTS + 5):
        await _park(db, settings, f"t{i:02d}", 2 if i < metrics.TOP_TENANTS else 1)
    s = sampler.Sampler(
        db=db, channel=amqp, topology=topology.Topology(settings.namespace), interval_seconds=60
    )
    await s.sample()
    text = generate_latest(metrics.WORKER).decode()
    lines = [line for line in text.splitlines() if line.startswith("bgworker_tenant_requests{")]
    tenants = {line.split('tenant="')[1].split('"')[0] for line in lines}
    assert len(tenants) == metrics.TOP_TENANTS + 1  # bounded: the top ten and "other"
    assert 'bgworker_tenant_requests{status="parked",tenant="other"} 5.0' in text
    assert 'bgworker_tenant_requests{status="running",tenant="other"} 5.0' in text


async def test_a_parked_requests_page_says_it_waits_for_earlier_requests(
    server: str, db: store.Store, settings: settings_mod.Settings, signer: tokens.Signer
) -> None:
    settings.fairness.tenant_in_flight = 1
    _, parked = await _park(db, settings, "ann", 1)
    url = f"{server}/status/{signer.general(parked, status_only=True)}"
    code, _, body = await fetch("GET", url)
    answer = json.loads(body)
    assert code == 200 and answer["status"] == "parked"
    assert "waiting for your earlier requests" in answer["message"]
    code, _, html = await fetch("GET", url, headers={"Accept": "text/html"})
    assert code == 200 and "Waiting for your earlier requests" in html.decode()
