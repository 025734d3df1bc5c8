"""Degraded links for a whole run or mid-download: the server host cut off from S3 while a
large file streams (the client sees an error or a short body, never a wrong byte, and
resumes with a Range request once the link is back), and the workers' PostgreSQL 200 ms a
round trip away (a proxy adding 100 ms each way) with 1% of their packets to ``gw`` lost."""

from __future__ import annotations

import hashlib
import uuid

import aiohttp
import pytest

from bgworker import settings as settings_mod
from bgworker.contract import events
from bgworker.links import tokens
from tests.helpers import wait_for_status
from tests.scenarios import handlers
from tests.scenarios.deploy import Deployment
from tests.scenarios.harness import Producer, Report
from tests.scenarios.site import SERVER, SLOW_PG_DELAY_MS, SLOW_PG_PORT, WORKERS

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.timeout(240)]

REQUESTS = 150
BIG = 64 * 1024 * 1024
BIG_SEED = 4242
CHUNK = 256 * 1024


async def test_the_server_host_cut_off_from_s3_mid_download(
    deployment: Deployment, settings: settings_mod.Settings, reports: list[Report]
) -> None:
    await deployment.start()
    site = deployment.site
    server = site.hosts[SERVER]
    seen: dict[str, object] = {}

    async def fault() -> None:
        big = events.FileRequested(
            id=uuid.uuid4(),
            file_type=handlers.FILE_TYPE,
            criteria={"kind": "ok", "size": BIG, "seed": BIG_SEED, "seconds": 0.2},
            filename="big.bin",
        )
        producer = Producer(site.producer_urls, settings.namespace, settings.queue_type)
        await producer.publish(big)
        await producer.close()
        await wait_for_status(deployment.db, big.id, "ready", timeout=90)
        url = f"{site.server_url}/download/{tokens.Signer(settings.tokens).general(big.id)}"
        expected = handlers.content(BIG, BIG_SEED)
        got = bytearray()
        timeout = aiohttp.ClientTimeout(total=120, sock_read=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            try:
                async with session.get(url) as response:
                    assert response.status == 200, await response.text()
                    async for chunk in response.content.iter_chunked(CHUNK):
                        if not got:  # the first bytes are in: cut the server off S3
                            server.cut_from(site.gw, site.s3_port)
                        got += chunk
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
                seen["error"] = type(exc).__name__
            seen["received"] = len(got)
            # Never a wrong byte: what arrived is the file's beginning, and not all of it.
            assert bytes(got) == expected[: len(got)], "the download carried wrong bytes"
            assert len(got) < BIG, "the whole file arrived though S3 was cut off"
            server.heal_from(site.gw, site.s3_port)
            headers = {"Range": f"bytes={len(got)}-"}
            async with session.get(url, headers=headers) as response:
                assert response.status == 206, await response.text()
                rest = await response.read()
        whole = bytes(got) + rest
        assert hashlib.sha256(whole).digest() == hashlib.sha256(expected).digest()
        seen["resumed"] = len(rest)

    report = await deployment.run(
        "srv cut off from S3 mid-download", REQUESTS, fault, publish_seconds=20
    )
    report.notes.append(
        f"download of {BIG >> 20} MiB: {seen.get('received')} bytes then "
        f"{seen.get('error', 'a short body')}, resumed with {seen.get('resumed')} bytes"
    )
    reports.append(report)
    print(report.line())
    report.check()


async def test_slow_and_lossy_postgresql_for_the_whole_run(
    deployment: Deployment, settings: settings_mod.Settings, reports: list[Report]
) -> None:
    site = deployment.site
    slow = site.database_url(settings.database_url.get_secret_value(), SLOW_PG_PORT)
    await deployment.start(
        # A lease a few round trips long would expire on a lost packet's retransmit.
        lambda host: {"BGWORKER_DATABASE_URL": slow, "BGWORKER_WORKER__LEASE_SECONDS": "10"}
    )

    async def fault() -> None:
        for host in WORKERS:
            site.hosts[host].loss(1, site.gw)  # until the site is restored

    report = await deployment.run(
        f"PostgreSQL {2 * SLOW_PG_DELAY_MS} ms round trip away and 1% loss to gw",
        REQUESTS,
        fault,
        publish_seconds=20,
        settle_timeout=150,
    )
    reports.append(report)
    print(report.line())
    report.check()
