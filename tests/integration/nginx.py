"""A real nginx (Debian's nginx-light, installed by scripts/test_deps.sh) running the shipped
``deploy/nginx/bgworker.conf`` on a loopback port: only the four values the file marks are
replaced, so a change to the shipped config is what the tests exercise."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Final

import aiohttp

from bgworker.cli.smtp_sink import free_port
from tests.helpers import REPO

SHIPPED: Final = REPO / "deploy" / "nginx" / "bgworker.conf"

# The main file around the shipped `http`-level include. `user root`: the test's storage
# directory lives under pytest's private tmp (mode 700); nginx ignores the line (with a
# notice) when it does not run as root.
MAIN_CONF: Final = """
worker_processes 1;
daemon off;
user root;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    default_type application/octet-stream;
    include {tmp}/bgworker.conf;
}}
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None
    )


def render(upstream: str, port: int, prefix: str, files: Path) -> str:
    """The shipped config with its marked values replaced; fails if one is not found (the
    shipped file changed shape and the test would no longer run it)."""
    text = SHIPPED.read_text()
    replacements = {
        "server offload-server:8080;  # [serve]": f"server {upstream};",
        "listen 8080;  # [listen]": f"listen 127.0.0.1:{port};",
        "location /_bgworker_files/ {  # [prefix]": f"location {prefix} {{",
        "alias /data/files/;  # [files]": f"alias {files}/;",
    }
    for old, new in replacements.items():
        assert text.count(old) == 1, f"{SHIPPED} no longer has {old!r}"
        text = text.replace(old, new)
    return text


@contextlib.asynccontextmanager
async def running_nginx(
    tmp: Path, *, upstream: str, prefix: str, files: Path
) -> AsyncIterator[str]:
    """nginx in front of ``upstream`` (host:port); yields its base URL; stopped at exit."""
    binary = nginx_binary()
    assert binary is not None, "nginx is not installed: run scripts/test_deps.sh"
    port = free_port()
    log = _write_config(tmp, render(upstream, port, prefix, files))
    proc = await asyncio.create_subprocess_exec(
        binary, "-p", str(tmp), "-c", str(tmp / "nginx.conf"), "-e", str(tmp / "error.log"),
        stdout=log, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        await _wait_listening(base, proc, tmp)
        yield base
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGQUIT)  # graceful: workers finish, then exit
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        log.close()


def _write_config(tmp: Path, include: str) -> IO[bytes]:
    """Write both files; the open log nginx's stderr goes to."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "bgworker.conf").write_text(include)
    (tmp / "nginx.conf").write_text(MAIN_CONF.format(tmp=tmp))
    return (tmp / "stderr.log").open("wb")


async def _wait_listening(base: str, proc: asyncio.subprocess.Process, tmp: Path) -> None:
    async with aiohttp.ClientSession() as session, asyncio.timeout(20):
        while True:
            if proc.returncode is not None:
                logs = [(tmp / n).read_text() for n in ("stderr.log", "error.log")]
                raise AssertionError(f"nginx exited {proc.returncode}: {logs}")
            with contextlib.suppress(aiohttp.ClientConnectionError):
                async with session.get(f"{base}/_bgworker_nothing") as response:
                    await response.read()
                    return
            await asyncio.sleep(0.05)
