"""Shared plumbing: services, databases, publishing, child processes, /proc readings, stats."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import aio_pika
import asyncpg
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from bench import workload
from bgworker.store import migrations

T = TypeVar("T")
REPO: Final = Path(__file__).resolve().parent.parent
AMQP_URL: Final = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
PG_ADMIN: Final = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
TMPFS: Final = Path(os.environ.get("BENCH_TMPFS_DIR", "/dev/shm"))
DISK: Final = Path(os.environ.get("BENCH_DISK_DIR", "/var/tmp"))
CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
PUBLISH_WINDOW: Final = 256  # publishes awaiting their confirm at once


# A shared RabbitMQ or PostgreSQL restarting mid-trial: wait for it, then run the trial again.
INTERRUPTIONS: Final = (
    OSError,
    ConnectionError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    aio_pika.exceptions.AMQPError,
    RuntimeError,  # aio-pika: "connection closed" while a robust connection reconnects
)
RETRIES: Final = 3


async def wait_for_services(timeout: float = 180) -> None:
    async with asyncio.timeout(timeout):
        while True:
            try:
                conn = await asyncpg.connect(PG_ADMIN, timeout=5)
                await conn.close()
                amqp = await aio_pika.connect(AMQP_URL, timeout=5)
                await amqp.close()
                return
            except Exception:
                await asyncio.sleep(1)


async def retrying(what: str, make: Callable[[], Awaitable[T]]) -> T:
    """Run ``make()``; if a service went away meanwhile, wait for it and run it again."""
    for attempt in range(RETRIES + 1):
        try:
            return await make()
        except INTERRUPTIONS as exc:
            if attempt == RETRIES:
                raise
            log(f"{what}: interrupted ({type(exc).__name__}: {exc}); waiting for the services")
            await wait_for_services()
    raise AssertionError("unreachable")


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- statistics ---------------------------------------------------------------------------


@dataclass
class Series:
    """Repeated measurements of one figure: reported as median [min-max]."""

    values: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.values.append(value)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    def to_json(self) -> dict[str, Any]:
        if not self.values:
            return {"median": None, "min": None, "max": None, "runs": []}
        return {
            "median": self.median,
            "min": min(self.values),
            "max": max(self.values),
            "runs": self.values,
        }


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


# -- databases ------------------------------------------------------------------------------


def db_url(name: str) -> str:
    return PG_ADMIN.rsplit("/", 1)[0] + "/" + name


@contextlib.asynccontextmanager
async def bench_database() -> AsyncIterator[str]:
    """A fresh database (bgworker migrations + ``bench_jobs``), dropped afterwards."""
    name = f"bgw_bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(PG_ADMIN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        conn = await asyncpg.connect(db_url(name))
        try:
            await migrations.apply(conn)
            await conn.execute(workload.SCHEMA)
        finally:
            await conn.close()
        yield db_url(name)
    finally:
        await wait_for_services()
        admin = await asyncpg.connect(PG_ADMIN)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def reset_tables(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "TRUNCATE bgworker_outbox, bgworker_attempts, bgworker_requests, bench_jobs"
        )
    finally:
        await conn.close()


# -- storage --------------------------------------------------------------------------------


@contextlib.contextmanager
def storage_dir(base: Path, label: str) -> Any:
    root = Path(tempfile.mkdtemp(prefix=f"bgw_bench_{label}_", dir=base))
    root.chmod(0o755)  # nginx's worker runs as nobody
    (root / ".tmp").mkdir()
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def empty_dir(root: Path) -> None:
    for child in root.iterdir():
        if child.name != ".tmp":
            shutil.rmtree(child, ignore_errors=True)


# -- RabbitMQ -------------------------------------------------------------------------------


async def amqp_connect(name: str) -> AbstractRobustConnection:
    return await aio_pika.connect_robust(AMQP_URL, client_properties={"connection_name": name})


async def publish_all(
    channel: AbstractChannel,
    exchange: str,
    routing_key: str,
    messages: Iterable[aio_pika.Message],
    window: int = PUBLISH_WINDOW,
) -> None:
    """Publish with confirms, ``window`` unconfirmed at most (the same for every contender)."""
    ex = channel.default_exchange if not exchange else await channel.get_exchange(exchange)
    slots = asyncio.Semaphore(window)
    pending: set[asyncio.Task[Any]] = set()

    async def one(message: aio_pika.Message) -> None:
        try:
            await ex.publish(message, routing_key, mandatory=True)
        finally:
            slots.release()

    for message in messages:
        await slots.acquire()
        task = asyncio.create_task(one(message))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.gather(*pending)


async def consumer_count(channel: AbstractChannel, queue: str) -> int:
    raw = await channel.get_underlay_channel()
    try:
        ok = await raw.queue_declare(queue, passive=True)
    except Exception:
        return 0
    return int(ok.consumer_count or 0)


async def wait_consumers(connection: AbstractRobustConnection, queue: str, n: int) -> None:
    """Wait until ``n`` consumers are attached to ``queue`` (a passive declare each time: a
    failed one closes the channel, so each check gets its own)."""
    async with asyncio.timeout(60):
        while True:
            channel = await connection.channel()
            try:
                if await consumer_count(channel, queue) >= n:
                    return
            finally:
                with contextlib.suppress(Exception):
                    await channel.close()
            await asyncio.sleep(0.1)


async def delete_queues(names: Iterable[str], exchanges: Iterable[str] = ()) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    try:
        for name in names:
            channel = await connection.channel()
            with contextlib.suppress(Exception):
                await channel.queue_delete(name)
        for name in exchanges:
            channel = await connection.channel()
            with contextlib.suppress(Exception):
                await channel.exchange_delete(name)
    finally:
        await connection.close()


# -- child processes ------------------------------------------------------------------------


def child_env(extra: dict[str, str]) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("BGWORKER_", "BENCH_"))}
    return {**base, "PYTHONPATH": str(REPO), **extra}


class Child:
    """A process the bench started; stopped (SIGTERM, then SIGKILL) by its own pid only."""

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], logdir: Path, cwd: Path = REPO
    ) -> None:
        self.name = name
        self.log_path = logdir / f"{name}.log"
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            argv, env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=cwd
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{tail}")

    async def stop(self, timeout: float = 30) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                await asyncio.to_thread(self.proc.wait)
        self._log.close()


def python_child(
    name: str,
    module_args: list[str],
    env: dict[str, str],
    logdir: Path,
    python: str = sys.executable,
    cwd: Path = REPO,
) -> Child:
    """``python -m ...`` (another venv's python and tree for a baseline: ``bench.baseline``)."""
    child = Child(name, [python, "-m", *module_args], env, logdir, cwd)
    _maybe_profile(child)
    return child


def _maybe_profile(child: Child) -> None:
    """BENCH_PROFILE=<substring of a child's name>: py-spy records that child (folded stacks,
    ``--idle`` included unless BENCH_PROFILE_IDLE=0: then only samples on the CPU) into
    BENCH_PROFILE_DIR (default /tmp) for BENCH_PROFILE_SECONDS."""
    wanted = os.environ.get("BENCH_PROFILE")
    pyspy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if not wanted or wanted not in child.name or pyspy is None:
        return
    out = Path(os.environ.get("BENCH_PROFILE_DIR", "/tmp")) / f"{child.name}.folded"
    seconds = os.environ.get("BENCH_PROFILE_SECONDS", "10")
    argv = [pyspy, "record", "--pid", str(child.pid), "-d", seconds, "-r", "200"]
    argv += ["--format", "raw", "-o", str(out), "--nonblocking"]
    if os.environ.get("BENCH_PROFILE_IDLE", "1") != "0":
        argv.append("--idle")
    log(f"profiling {child.name} into {out}")
    subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def tree_pids(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    out = [pid]
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            children = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
            for child in children:
                out.extend(tree_pids(int(child)))
    return out


def cpu_seconds(pids: Iterable[int]) -> float:
    """utime + stime of these processes (/proc/<pid>/stat), in seconds."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def status_kib(pid: int, key: str) -> int:
    """A ``/proc/<pid>/status`` figure in KiB (VmHWM: peak RSS, VmRSS: current)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def mib(kib: int) -> float:
    return kib / 1024


def dump(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
