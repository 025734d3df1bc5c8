"""``bgworker serve --workers 3``: three processes answer on one port, SIGTERM drains a
download in flight and the parent exits 0; a child that dies is reported and fails the
parent; a scrape of ``/metrics`` counts the requests of all three."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import sys
import tempfile
from pathlib import Path

import aiohttp

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.cli.smtp_sink import free_port
from bgworker.links import tokens
from tests.acceptance import scrapes
from tests.acceptance.processes import Proc, Spawn, run_cli, wait_healthy
from tests.handlers import blob_bytes
from tests.helpers import REPO, Publish, StartWorker, settings_env, wait_for_status, wait_until

BIG = 24 * 1024 * 1024  # large enough that the client holds it mid-transfer


def _children(parent: int) -> set[int]:
    path = Path(f"/proc/{parent}/task/{parent}/children")
    return {int(p) for p in path.read_text().split()}


async def _pids_answering(proc: Proc, at_least: int, tries: int = 300) -> set[int]:
    """The pids in /healthz over fresh connections (the kernel picks a listener for each
    new connection by its address hash), until ``at_least`` differ or ``tries`` is spent."""
    seen: set[int] = set()
    for _ in range(tries):
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            async with session.get(f"http://127.0.0.1:{proc.port}/healthz") as response:
                assert response.status == 200
                seen.add((await response.json())["pid"])
        if len(seen) >= at_least:
            break
    return seen


async def test_three_processes_answer_and_sigterm_drains_a_download(
    spawn: Spawn,
    settings: settings_mod.Settings,
    start_worker: StartWorker,
    publish: Publish,
    db: store.Store,
) -> None:
    await start_worker()
    event = await publish("blob", {"size": BIG, "seed": 3}, filename="big.bin")
    row = await wait_for_status(db, event.id, "ready", timeout=120)

    proc = await spawn("serve", "--workers", "3")
    port = proc.port
    assert port is not None
    await wait_until(lambda: len(_children(proc.pid)) == 3)
    children = _children(proc.pid)
    pids = await _pids_answering(proc, at_least=2)
    assert len(pids) >= 2 and pids <= children, (pids, children)

    # A download in flight: the client takes the first bytes, the server is told to stop,
    # and the rest still arrives, whole.
    url = f"http://127.0.0.1:{port}/download/{tokens.Signer(settings.tokens).general(row.id)}"
    digest = hashlib.sha256()
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        first = await response.content.readexactly(64 * 1024)
        digest.update(first)
        proc.signal(signal.SIGTERM)
        # The listeners close: no new connection is accepted, the open one goes on.
        await wait_until(lambda: not _accepts(port), timeout=30)
        async for chunk in response.content.iter_chunked(256 * 1024):
            digest.update(chunk)
    assert digest.hexdigest() == row.sha256 == hashlib.sha256(blob_bytes(BIG, 3)).hexdigest()
    assert await proc.wait_exit(timeout=60) == 0
    assert "passing it to 3 processes" in proc.log()
    assert not any(_alive(pid) for pid in children)


def _alive(pid: int) -> bool:
    """Running: not gone, and not a zombie (an orphan's exit status waits for an init that
    may never reap it in a container)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


async def test_a_child_that_dies_is_reported_and_fails_the_parent(spawn: Spawn) -> None:
    proc = await spawn("serve", "--workers", "2")
    await wait_until(lambda: len(_children(proc.pid)) == 2)
    victim, other = sorted(_children(proc.pid))
    os.kill(victim, signal.SIGKILL)
    assert await proc.wait_exit(timeout=60) == 1
    assert f"process {victim} exited (status -9) while serving" in proc.log()
    # The other child was stopped gracefully, not left behind.
    assert not _alive(other)


async def test_a_second_server_on_the_same_port_is_refused(
    spawn: Spawn, settings: settings_mod.Settings
) -> None:
    # SO_REUSEPORT would let it bind and take half the connections without a word.
    proc = await spawn("serve", "--workers", "2")
    await wait_healthy(proc)
    env = {**settings_env(settings), "BGWORKER_WEB__PORT": str(proc.port)}
    result = await run_cli("serve", "--workers", "2", env=env, timeout=60)
    assert result.code == 69, result.err
    assert f"port {proc.port} on 127.0.0.1 already accepts connections" in result.err
    assert len(_children(proc.pid)) == 2 and proc.running()  # the first one is untouched
    proc.signal()
    assert await proc.wait_exit(timeout=60) == 0


async def test_workers_need_a_fixed_port(settings: settings_mod.Settings) -> None:
    env = {**settings_env(settings), "BGWORKER_WEB__PORT": "0"}
    result = await run_cli("serve", "--workers", "2", env=env)
    assert result.code == 64
    assert "needs a fixed port" in result.err


async def test_ctrl_c_reaches_the_children_once(
    settings: settings_mod.Settings, tmp_path: Path
) -> None:
    # A terminal's Ctrl-C is SIGINT to the whole foreground process group. The parent
    # leads its own group here (a session of its own), as it would in a terminal: the
    # children must get the signal once, from the parent, and drain (exit 0); were they
    # in the parent's group, the parent's copy would be their second signal (exit 1).
    port = free_port()
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bgworker", "serve", "--workers", "2", "--port", str(port),
            env=settings_env(settings), cwd=REPO, stdout=log, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        proc = Proc("serve", process, log_path, log, port)
        try:
            await wait_healthy(proc)
            await wait_until(lambda: len(_children(proc.pid)) == 2)
            # Outside the parent's group: the group signal cannot reach them directly (two
            # SIGINTs that close together may merge, so the exit code alone cannot tell).
            assert all(os.getpgid(c) != proc.pid for c in _children(proc.pid))
            os.killpg(proc.pid, signal.SIGINT)
            assert await proc.wait_exit(timeout=60) == 0, proc.log()
            assert "second signal" not in proc.log()
        finally:
            if proc.running():
                os.killpg(proc.pid, signal.SIGKILL)
                await process.wait()


async def test_children_stop_when_the_parent_is_killed(spawn: Spawn) -> None:
    # SIGKILL leaves the parent no chance to pass anything on: the children notice they
    # were re-parented and stop, instead of serving on the port forever.
    proc = await spawn("serve", "--workers", "2")
    await wait_until(lambda: len(_children(proc.pid)) == 2)
    children = _children(proc.pid)
    proc.signal(signal.SIGKILL)
    await proc.wait_exit()
    await wait_until(lambda: not any(_alive(pid) for pid in children), timeout=30)


async def test_a_scrape_counts_every_process(spawn: Spawn) -> None:
    proc = await spawn("serve", "--workers", "3")
    assert proc.port is not None
    await wait_until(lambda: len(_children(proc.pid)) == 3)
    assert len(await _pids_answering(proc, at_least=3)) == 3  # all three listen by now
    [metrics_dir] = _metrics_dirs(proc.pid)
    before = await scrapes.scrape(proc.port)  # wait_healthy's requests are in it
    answered = await scrapes.healthz_pids(proc.port, 90)
    assert len(answered) == 3 and set(answered) <= _children(proc.pid), answered
    # Each scrape reaches one process, whichever: every one sees all 90, and the scrapes
    # before it (a request is counted once answered, so a scrape does not see itself).
    for scraped in range(1, 7):
        samples = await scrapes.scrape(proc.port)
        healthz = scrapes.requests_to(samples, "/healthz")
        assert healthz == scrapes.requests_to(before, "/healthz") + 90, samples
        assert scrapes.requests_to(samples, "/metrics") == scraped
        # In flight: the scrape itself, in one process (a live sum, not one per process).
        assert samples[("bgworker_http_requests_in_flight", frozenset())] == 1
        # Only the server's series: the worker's, defined in the same module, stay out.
        assert not any(name.startswith("bgworker_jobs") for name, _ in samples)
    proc.signal(signal.SIGTERM)
    assert await proc.wait_exit(timeout=60) == 0
    assert not metrics_dir.exists()  # the run's files go with it


def _metrics_dirs(parent: int) -> list[Path]:
    return list(Path(tempfile.gettempdir()).glob(f"bgworker-metrics-{parent}-*"))
