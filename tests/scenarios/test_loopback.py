"""The harness on one loopback, no fault: the control run every fault scenario is compared
with (three worker processes and a server, emails and webhooks, every count checked)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.cli.smtp_sink import free_port
from tests.scenarios.conftest import scenario_env
from tests.scenarios.harness import Producer, Report, Scenario, plan
from tests.scenarios.processes import Loopback, Processes
from tests.scenarios.receivers import Mailbox, WebhookReceiver

pytestmark = [pytest.mark.faults, pytest.mark.slow]

HOSTS = ("w1", "w2", "w3")


async def test_control_run_on_loopback(
    settings: settings_mod.Settings,
    db: store.Store,
    mailbox: Mailbox,
    hooks: WebhookReceiver,
    tmp_path: Path,
    reports: list[Report],
) -> None:
    port = free_port()
    env = scenario_env(settings, mailbox, hooks, f"http://127.0.0.1:{port}")
    procs = Processes(env, tmp_path, Loopback(tmp_path))
    try:
        await procs.server("srv", "127.0.0.1", port, f"http://127.0.0.1:{port}")
        for host in HOSTS:
            await procs.worker(host)
        scenario = Scenario(
            "control (loopback, no fault)",
            plan(150),
            db,
            Producer(settings.amqp_url.get_secret_value(), settings.namespace, settings.queue_type),
            mailbox,
            hooks,
            procs.builds_files(),
            publish_seconds=10,
        )
        report = await scenario.run()
        reports.append(report)
        print(report.line())
        report.check()
    finally:
        codes = await procs.stop()
    assert all(code == 0 for code in codes.values()), (codes, procs.logs())
