"""``serve --workers N``'s metrics when one of its processes dies and another takes its
place: the dead one's requests stay in the total, the new one adds its own, nothing is
counted twice. The supervisor does not restart a child (the process manager restarts the
whole server, web/supervisor.py), so the test plays the supervisor: it starts the children
the way it does (``metrics.shared_dir``, ``process_env``), and on a death calls
``process_gone`` as ``Supervisor._exited`` does."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from bgworker import settings as settings_mod
from bgworker.cli.smtp_sink import free_port
from bgworker.observe import metrics
from bgworker.web import supervisor
from tests.acceptance import scrapes
from tests.acceptance.processes import Proc
from tests.helpers import REPO, settings_env

# A started child, and the /healthz answers it took to see it listen, by pid.
Child = Callable[[], Awaitable[tuple[Proc, Counter[int]]]]


@pytest.fixture
async def metrics_dir() -> AsyncIterator[Path]:
    with metrics.shared_dir() as path:
        yield path


@pytest.fixture
async def child(
    settings: settings_mod.Settings, tmp_path: Path, metrics_dir: Path
) -> AsyncIterator[Child]:
    """A child of `serve --workers N` on one shared port, this test as its parent."""
    port = free_port()
    procs: list[Proc] = []
    env = {**metrics.process_env(metrics_dir), **settings_env(settings)}

    async def start() -> tuple[Proc, Counter[int]]:
        argv = [*supervisor.CHILD_ARGS, str(os.getpid()), "--host", "127.0.0.1"]
        log_path = tmp_path / f"serve-{len(procs)}.log"
        log = log_path.open("wb")
        process = await asyncio.create_subprocess_exec(
            sys.executable, *argv, "--port", str(port),
            env=env, cwd=REPO, stdout=log, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        proc = Proc(f"serve-{len(procs)}", process, log_path, log, port)
        procs.append(proc)
        return proc, await scrapes.until_answered_by(proc.pid, port)

    yield start
    for proc in procs:
        if proc.running():
            proc.process.kill()
        await proc.process.wait()
        proc.log_file.close()


async def test_a_dead_process_keeps_its_counts_and_its_successor_adds_its_own(
    child: Child, metrics_dir: Path
) -> None:
    (first, _), (second, _) = await child(), await child()
    assert first.port is not None
    before = scrapes.requests_to(await scrapes.scrape(first.port), "/healthz")
    answered = await scrapes.healthz_pids(first.port, 60)
    assert answered[first.pid] > 0 and answered[second.pid] > 0, answered

    first.signal(signal.SIGKILL)
    await first.wait_exit()
    metrics.process_gone(first.pid, metrics_dir)
    # Its counters stay; its live gauge (requests in flight) is gone with it.
    files = _names(metrics_dir)
    assert f"counter_{first.pid}.db" in files
    assert f"gauge_livesum_{first.pid}.db" not in files

    third, seen = await child()  # the restart: a new pid, files of its own
    answered += seen + await scrapes.healthz_pids(first.port, 60)
    assert answered[third.pid] > 0, answered
    for _ in range(4):
        samples = await scrapes.scrape(first.port)
        assert scrapes.requests_to(samples, "/healthz") - before == answered.total(), samples
        assert samples[("bgworker_http_requests_in_flight", frozenset())] == 1


def _names(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}
