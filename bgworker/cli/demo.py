"""``bgworker demo``: the whole pipeline once, on real services, verified end to end.

migrate -> start `bgworker worker` and `bgworker serve` (subprocesses) and an SMTP sink ->
publish a request -> wait for the email -> follow its link -> download -> compare the bytes
with the sha256 recorded in PostgreSQL. Everything it creates is namespaced to this run and
removed afterwards (queues, files); the demo database is kept for inspection.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import aiohttp
import asyncpg

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.cli import smtp_sink
from bgworker.contract import events
from bgworker.messaging import broker, failover, publisher, topology
from bgworker.store import migrations

PG_HINT: Final = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
RABBIT_HINT: Final = "rabbitmq-server -detached"
SERVICES_HINT: Final = "`make services` starts both"
DEMO_DB: Final = "postgresql://postgres@127.0.0.1:5432/bgworker_demo"
IDENTITY_HEADER: Final = "X-Demo-User"
LINK_RE: Final = re.compile(r"https?://\S+/download/\S+")


class DemoError(Exception):
    pass


def _unreachable(service: str, url: str, variable: str, exc: BaseException, hint: str) -> DemoError:
    # Name the address tried (never the password) and both ways out: start the service, or
    # point the setting at one that runs.
    parts = urlsplit(url)
    where = f"{parts.hostname or '?'}:{parts.port or '(default port)'}"
    return DemoError(
        f"{service} is not reachable at {where} ({exc}).\n"
        f"  Start it: {hint}  ({SERVICES_HINT})\n"
        f"  or set {variable} to a running {service}."
    )


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


async def _check_services(amqp_url: str, dsn: str) -> None:
    try:
        await store.ensure_database(dsn)
        conn = await asyncpg.connect(dsn, timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise _unreachable("PostgreSQL", dsn, "BGWORKER_DATABASE_URL", exc, PG_HINT) from None
    try:
        await migrations.apply(conn)
    finally:
        await conn.close()
    try:
        # A plain connection: a robust one would log "reconnecting" although we give up here.
        connection = await failover.connect_plain(
            amqp_url, client_properties={"connection_name": "bgworker-demo-check"}
        )
    except (OSError, TimeoutError, ConnectionError) as exc:
        raise _unreachable("RabbitMQ", amqp_url, "BGWORKER_AMQP_URL", exc, RABBIT_HINT) from None
    await connection.close()


def _spawn(command: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "bgworker", command],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def _wait_http(session: aiohttp.ClientSession, url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            async with session.get(url) as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        if time.monotonic() > deadline:
            raise DemoError(f"server did not answer {url} within {timeout:.0f}s")
        await asyncio.sleep(0.2)


async def run(rows: int) -> None:
    base = settings_mod.Settings()
    amqp_url = base.amqp_url.get_secret_value()
    dsn = os.environ.get("BGWORKER_DATABASE_URL", DEMO_DB)
    await _check_services(amqp_url, dsn)
    namespace = f"bgworker-demo-{uuid.uuid4().hex[:8]}"
    work = Path(tempfile.mkdtemp(prefix="bgworker-demo-"))
    port = smtp_sink.free_port()
    env = {
        **os.environ,
        "BGWORKER_AMQP_URL": amqp_url,
        "BGWORKER_DATABASE_URL": dsn,
        "BGWORKER_NAMESPACE": namespace,
        "BGWORKER_STORAGE_DIR": str(work / "files"),
        "BGWORKER_TOKENS__SECRET_KEYS": secrets.token_urlsafe(32),
        "BGWORKER_WEB__PORT": str(port),
        "BGWORKER_WEB__PUBLIC_URL": f"http://127.0.0.1:{port}",
        "BGWORKER_WEB__IDENTITY_HEADER": IDENTITY_HEADER,
    }
    async with smtp_sink.SmtpSink() as sink:
        env["BGWORKER_SMTP__PORT"] = str(sink.port)
        say(f"namespace {namespace}; SMTP sink on :{sink.port}; server on :{port}; logs in {work}")
        procs = {
            "worker": _spawn("worker", env, work / "worker.log"),
            "server": _spawn("serve", env, work / "server.log"),
        }
        try:
            await _exercise(amqp_url, dsn, namespace, sink, port, rows)
        finally:
            for proc in procs.values():
                proc.send_signal(signal.SIGTERM)
            for name, proc in procs.items():
                code = proc.wait(timeout=60)
                say(f"{name} stopped (exit {code})")
            await _remove_topology(amqp_url, namespace)
            # The logs stay for inspection; the built files go, as the docstring promises.
            shutil.rmtree(work / "files", ignore_errors=True)


async def _exercise(
    amqp_url: str, dsn: str, namespace: str, sink: smtp_sink.SmtpSink, port: int, rows: int
) -> None:
    request = events.FileRequested(
        id=uuid.uuid4(),
        file_type="login_events",
        criteria={"rows": rows, "seed": 42},
        filename="login events \u2013 demo.csv",
        content_type="text/csv",
        description="Login events, demo run",
        requester=events.Requester(
            id="demo-user", email="demo@example.com", language="en", timezone="Europe/Amsterdam"
        ),
    )
    started = time.monotonic()
    async with publisher.Publisher(amqp_url, namespace=namespace) as pub:
        await pub.publish(request)
    say(f"published FileRequested {request.id} (login_events, {rows} rows)")
    try:
        messages = await sink.wait_for(1, timeout=120)
    except TimeoutError:
        raise DemoError("no email arrived within 120s: see worker.log") from None
    mail = messages[0]
    elapsed = time.monotonic() - started
    say(f"email received after {elapsed:.2f}s: {mail['Subject']!r} to {mail['To']}")
    match = LINK_RE.search(smtp_sink.text_body(mail))
    if not match:
        raise DemoError("the email holds no download link")
    link = match.group(0)
    pool = await store.create_pool(dsn, min_size=1, max_size=1)
    try:
        row = await store.Store(pool).requests.get_request(request.id)
    finally:
        await pool.close()
    if row is None or row.sha256 is None or row.size_bytes is None:
        raise DemoError(f"request {request.id} is not recorded as built: see worker.log")
    say(
        f"request row: status={row.status} attempts={row.attempts} "
        f"size={row.size_bytes} sha256={row.sha256[:16]}..."
    )
    digest = hashlib.sha256()
    size = 0
    async with aiohttp.ClientSession() as session:
        await _wait_http(session, f"http://127.0.0.1:{port}/healthz", timeout=30)
        # The link is bound to the requester (it has an id): the server learns who is calling
        # from a header a trusted auth proxy would set; here the demo plays that proxy.
        async with session.get(link, headers={IDENTITY_HEADER: "demo-user"}) as response:
            if response.status != 200:
                raise DemoError(f"download answered {response.status}: {await response.text()}")
            disposition = response.headers.get("Content-Disposition")
            async for chunk in response.content.iter_chunked(256 * 1024):
                digest.update(chunk)
                size += len(chunk)
    say(f"downloaded {size} bytes ({disposition})")
    if digest.hexdigest() != row.sha256 or size != row.size_bytes:
        raise DemoError(
            f"downloaded bytes do not match: sha256 {digest.hexdigest()} vs recorded {row.sha256}"
        )
    say(f"sha256 verified: {digest.hexdigest()}")
    say(f"done in {time.monotonic() - started:.2f}s: published -> built -> emailed -> downloaded")


async def _remove_topology(amqp_url: str, namespace: str) -> None:
    connection = await broker.connect(amqp_url, name="bgworker-demo-cleanup")
    try:
        channel = await connection.channel()
        await topology.Topology(namespace).delete(channel)
    finally:
        await connection.close()


def main(rows: int = 20000) -> int:
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every SMTP verb
    try:
        asyncio.run(run(rows))
    except DemoError as exc:
        print(f"[demo] FAILED: {exc}", file=sys.stderr)
        return 69
    return 0
