"""Broker nodes lost and restarted under load, on a 3-node RabbitMQ cluster across hosts:
``kill -9`` of the node that leads the work queue and holds every other queue (brought back
after 20 s, and never brought back), and a rolling restart of the three nodes. Each worker
host lists the nodes starting with its own; the producer lists them all."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from tests.scenarios.deploy import Deployment
from tests.scenarios.harness import Report, Scenario
from tests.scenarios.site import WORKERS


def _builds_after(scenario: Scenario, moment: float) -> str:
    """Builds completed on each worker host after ``moment`` (time.time())."""
    hosts = Counter(
        str(b["worker"]).partition(":")[0]
        for b in scenario.read_builds()
        if float(str(b["t"])) > moment
    )
    return ", ".join(f"{h} {hosts.get(h, 0)}" for h in WORKERS)


pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.timeout(240)]

REQUESTS = 200


def _holder(deployment: Deployment) -> str:
    """The host of the node leading the work queue (r1, where the topology was declared),
    checked to hold every other queue too."""
    holders = deployment.site.holders(deployment.settings.namespace)
    holder = holders[deployment.topology.work_queue]
    assert set(holders.values()) == {holder}, holders
    return holder


def _leader(deployment: Deployment) -> str:
    return deployment.site.holders(deployment.settings.namespace)[deployment.topology.work_queue]


async def _kill9_of_the_work_queue_leader(
    deployment: Deployment, reports: list[Report], back_after: float | None
) -> None:
    """Kill -9 the node leading the work queue 6 s into publishing; start it again after
    ``back_after`` seconds, or never (None: only when the site is restored)."""
    await deployment.start()
    site = deployment.site
    holder = await asyncio.to_thread(_holder, deployment)
    node = site.node(holder)

    killed: list[float] = []
    moved: list[str] = []

    async def fault() -> None:
        await asyncio.sleep(6)
        await asyncio.to_thread(node.kill)
        killed.append(time.time())
        if back_after is None:
            return
        await asyncio.sleep(back_after)
        moved.append(await asyncio.to_thread(_leader, deployment))
        node.start()
        await asyncio.to_thread(site.cluster.wait)

    how = "for good" if back_after is None else f"back after {back_after:g} s"
    scenario = deployment.scenario(
        f"kill -9 of {holder} (work queue leader), {how}", REQUESTS, publish_seconds=25
    )
    report = await scenario.run(fault)
    led = (
        f"work queue now led by {_leader(deployment)}"
        if back_after is None
        else f"work queue led by {moved[0]} while {holder} was down"
    )
    report.notes.append(f"{led}; builds after the kill: " + _builds_after(scenario, killed[0]))
    reports.append(report)
    print(report.line())
    report.check()


async def test_kill9_of_the_node_leading_the_work_queue_then_back(
    deployment: Deployment, reports: list[Report]
) -> None:
    await _kill9_of_the_work_queue_leader(deployment, reports, back_after=20)


async def test_kill9_of_the_node_leading_the_work_queue_for_good(
    deployment: Deployment, reports: list[Report]
) -> None:
    await _kill9_of_the_work_queue_leader(deployment, reports, back_after=None)


async def test_rolling_restart_of_the_three_nodes(
    deployment: Deployment, reports: list[Report]
) -> None:
    await deployment.start()
    cluster = deployment.site.cluster
    restarted: list[str] = []

    async def fault() -> None:
        for node in cluster.nodes:
            await asyncio.sleep(3)
            await asyncio.to_thread(node.stop)  # rabbitmqctl stop: a graceful shutdown
            node.start()
            await asyncio.to_thread(cluster.wait)
            restarted.append(node.host.name)

    report = await deployment.run(
        "rolling restart of r1, r2, r3", REQUESTS, fault, publish_seconds=30
    )
    report.notes.append(f"restarted {', '.join(restarted)}")
    reports.append(report)
    print(report.line())
    report.check()
