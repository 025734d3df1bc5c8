"""Reading a server's ``/metrics`` and making requests over fresh connections, for the
tests of ``serve --workers N``'s metrics."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

import aiohttp
from prometheus_client.parser import text_string_to_metric_families


async def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """One scrape of ``/metrics``: {(sample name, labels): value}."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        async with s.get(f"http://127.0.0.1:{port}/metrics") as response:
            assert response.status == 200
            text = await response.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def requests_to(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], route: str) -> float:
    """``bgworker_http_requests_total`` of ``route``, every method and status."""
    return sum(
        value
        for (name, labels), value in samples.items()
        if name == "bgworker_http_requests_total" and ("route", route) in labels
    )


async def healthz_pids(port: int, count: int) -> Counter[int]:
    """``count`` GETs of /healthz, each over a new connection (the kernel picks one of the
    SO_REUSEPORT listeners per connection): how many each process answered."""
    answered: Counter[int] = Counter()
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(count):
            async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                assert response.status == 200
                answered[(await response.json())["pid"]] += 1
    return answered


async def until_answered_by(pid: int, port: int, timeout: float = 30) -> Counter[int]:
    """/healthz over new connections until process ``pid`` answers one (it listens): which
    processes answered meanwhile. A refused connection (nobody listens yet) is not counted."""
    answered: Counter[int] = Counter()
    async with asyncio.timeout(timeout):
        while pid not in answered:
            with contextlib.suppress(aiohttp.ClientConnectorError):
                answered += await healthz_pids(port, 1)
            await asyncio.sleep(0.01)
    return answered
