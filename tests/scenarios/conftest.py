"""The scenarios' fixtures: the receivers, the environment their bgworker processes share,
and the summary lines printed at the end of the run (one per scenario, for the record)."""

from __future__ import annotations

import base64
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from bgworker import settings as settings_mod
from bgworker import store
from tests.helpers import settings_env
from tests.scenarios.harness import Report
from tests.scenarios.receivers import Mailbox, WebhookReceiver

if TYPE_CHECKING:
    from tests.scenarios.deploy import Deployment
    from tests.scenarios.site import Site

REPORTS: list[Report] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if REPORTS:
        terminalreporter.section("scenarios")
        for report in REPORTS:
            terminalreporter.write_line(report.line())


@pytest.fixture
def reports() -> list[Report]:
    """Append a scenario's report to have its line printed at the end of the run."""
    return REPORTS


@pytest.fixture
async def mailbox() -> AsyncIterator[Mailbox]:
    async with Mailbox() as box:
        yield box


@pytest.fixture
async def hooks() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver() as receiver:
        yield receiver


def scenario_env(
    settings: settings_mod.Settings,
    mailbox: Mailbox,
    hooks: WebhookReceiver,
    public_url: str,
    *,
    lease_seconds: float = 3,
) -> dict[str, str]:
    """What every bgworker process of a scenario runs with: the test's settings, short
    leases (a lost worker's jobs come back in seconds), the scenarios' handler, emails to
    ``mailbox``, webhooks to ``hooks`` and links to ``public_url``."""
    whsec = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    return {
        **settings_env(settings),
        "BGWORKER_HANDLERS": "tests.scenarios.handlers:registry",
        "BGWORKER_SMTP__HOST": mailbox.host,
        "BGWORKER_SMTP__PORT": str(mailbox.port),
        "BGWORKER_WEBHOOKS__URL": hooks.url,
        "BGWORKER_WEBHOOKS__SECRET": whsec,
        "BGWORKER_WEBHOOKS__ALLOW_PRIVATE": "true",
        "BGWORKER_WEBHOOKS__TIMEOUT_SECONDS": "5",
        "BGWORKER_WEB__PUBLIC_URL": public_url,
        "BGWORKER_WORKER__LEASE_SECONDS": str(lease_seconds),
        "BGWORKER_WORKER__REAP_INTERVAL_SECONDS": "1",
        "BGWORKER_WORKER__HOLD_TIMEOUT_SECONDS": "120",
        "BGWORKER_WORKER__MAX_ATTEMPTS": "6",
        "BGWORKER_STARTUP_RETRY_SECONDS": "60",
        "BGWORKER_LOG_LEVEL": "INFO",
    }


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The hosts, the broker cluster and S3, made once for every scenario that runs on hosts
    (skipped where hosts cannot be made: not root, no RabbitMQ server)."""
    from tests.hosts import unavailable
    from tests.hosts.rabbit import RabbitCluster
    from tests.scenarios.site import site as make_site

    if (reason := unavailable() or RabbitCluster.unavailable()) is not None:
        pytest.skip(reason)
    with make_site(tmp_path_factory.mktemp("seaweedfs")) as made:
        yield made


@pytest.fixture
async def deployment(
    site: Site,
    settings: settings_mod.Settings,
    db: store.Store,
    mailbox: Mailbox,
    hooks: WebhookReceiver,
    tmp_path: Path,
) -> AsyncIterator[Deployment]:
    """The scenario's deployment on the site (``await deployment.start()`` starts its
    processes); stopped, and the site restored, at the end."""
    from tests.scenarios.deploy import Deployment

    made = Deployment(site, settings, db, mailbox, hooks, tmp_path)
    try:
        yield made
    finally:
        codes = await made.stop()
    assert all(code == 0 for code in codes.values()), (codes, made.procs.logs())
