"""The command's output as scripts and people meet it: a closed pipe, `status` (summary,
JSON, watch), `publish --wait` (plain lines, and a live bar on a terminal), the worker's
start-up summary and `bgworker smtp-sink`."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import os
import signal
import sys
import uuid
from pathlib import Path

import aio_pika

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.cli.smtp_sink import free_port
from bgworker.contract import events
from bgworker.messaging import topology, wire
from tests.acceptance.processes import Spawn, run_cli, run_on_terminal
from tests.helpers import REPO, insert_request, settings_env

# Status of a command whose reader went away: 0, or 141 (128 + SIGPIPE) like `yes | head`.
CLOSED_PIPE = {0, 141}
# The keys of `bgworker status --json` (docs/operating.md "Command line"): a stable object, not the
# table's columns.
STATUS_KEYS = {
    "id",
    "status",
    "file_type",
    "filename",
    "content_type",
    "size",
    "sha256",
    "progress",
    "percent",
    "progress_done",
    "progress_total",
    "attempts",
    "max_attempts",
    "cancel_requested",
    "reused_from",
    "link",
    "requester",
    "requested_at",
    "received_at",
    "started_at",
    "finished_at",
    "notified_at",
    "expires_at",
    "next_run_at",
    "worker",
    "failure_reason",
    "last_error_class",
    "last_error",
    "attempt_log",
    "effects",
}


async def _start(*argv: str, env: dict[str, str], stdout: int) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bgworker",
        *argv,
        env=env,
        cwd=REPO,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=stdout,
        stderr=asyncio.subprocess.PIPE,
    )


async def _into_closed_pipe(*argv: str, env: dict[str, str]) -> tuple[int, str]:
    """Run with a standard output nobody reads any more (`| head -0`)."""
    read, write = os.pipe()
    os.close(read)
    proc = await _start(*argv, env=env, stdout=write)
    os.close(write)
    _, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def _first_line_then_close(*argv: str, env: dict[str, str]) -> tuple[int, bytes, str]:
    """`bgworker ARGV | head -1`: read one line, then close the pipe."""
    read, write = os.pipe()
    proc = await _start(*argv, env=env, stdout=write)
    os.close(write)

    def first_line() -> bytes:
        line = b""
        try:
            while not line.endswith(b"\n") and (byte := os.read(read, 1)):
                line += byte  # one byte at a time: nothing past the line is read
        finally:
            os.close(read)
        return line

    line = await asyncio.to_thread(first_line)
    _, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, line, err.decode()


async def _queued(db: store.Store, **fields: object) -> events.FileRequested:
    event = events.FileRequested(
        id=uuid.uuid4(), file_type="login_events", criteria={"rows": 5}, **fields
    )
    await insert_request(db, event, 4)
    return event


async def test_a_closed_pipe_ends_quietly(
    settings: settings_mod.Settings, db: store.Store, amqp: aio_pika.abc.AbstractChannel
) -> None:
    env = settings_env(settings)
    dead = topology.Topology(settings.namespace).dead_queue
    # Enough dead letters that `dlq list --json` fills the pipe and waits for its reader.
    error = "x" * 1000
    for _ in range(300):
        message_id = str(uuid.uuid4())
        body = json.dumps({"id": message_id, "file_type": "login_events"}).encode()
        message = aio_pika.Message(body, message_id=message_id, headers={wire.ERROR: error})
        await amqp.default_exchange.publish(message, routing_key=dead)

    code, line, err = await _first_line_then_close("dlq", "list", "--json", env=env)
    assert (code, line, err) in {(c, b"[\n", "") for c in CLOSED_PIPE}  # was 69, "PostgreSQL"

    event = await _queued(db)
    for argv in (
        ("--help",),
        ("status", "--help"),
        ("status", str(event.id)),
        ("status", str(event.id), "--json"),
        ("link", str(event.id), "--status"),
        ("migrate",),
        ("dlq", "list"),
    ):
        code, err = await _into_closed_pipe(*argv, env=env)
        assert (code, err) in {(c, "") for c in CLOSED_PIPE}, argv


async def test_status_summary_and_json(settings: settings_mod.Settings, db: store.Store) -> None:
    env = settings_env(settings)
    event = await _queued(db, requester={"email": "ann@example.com", "timezone": "Europe/Paris"})

    human = await run_cli("status", str(event.id), env=env)
    assert human.code == 0, human.err
    labels = [line.split()[0] for line in human.out.splitlines()]
    for label in ("request", "state", "file", "progress", "attempts", "link", "requester"):
        assert label in labels, human.out
    for label in ("requested", "started", "finished", "notified", "expires"):
        assert label in labels, human.out
    assert "queued" in human.out and "ann@example.com, en, Europe/Paris" in human.out
    for internal in ("storage_key", "lease_owner", "lease_token", "size_bytes", "{"):
        assert internal not in human.out

    shown = json.loads((await run_cli("status", str(event.id), "--json", env=env)).out)
    assert set(shown) == STATUS_KEYS
    assert shown["status"] == "queued" and shown["size"] is None
    assert shown["link"] == {"state": "waiting", "generation": 0}
    assert shown["requester"]["timezone"] == "Europe/Paris"

    unknown = await run_cli("status", str(uuid.uuid4()), "--json", env=env)
    assert unknown.code == 3 and unknown.out == ""
    assert "not recorded yet" in unknown.err


async def _next_line(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert line, "the command ended early"
    return line.decode()


async def test_status_watch_follows_until_the_request_ends(
    settings: settings_mod.Settings, db: store.Store
) -> None:
    env = settings_env(settings)
    request_id = uuid.uuid4()
    plain = await _start(
        "status", str(request_id), "--watch", env=env, stdout=asyncio.subprocess.PIPE
    )
    as_json = await _start(
        "status", str(request_id), "--watch", "--json", env=env, stdout=asyncio.subprocess.PIPE
    )
    try:
        # Not recorded yet: watched all the same (a producer has just published it).
        assert "not recorded yet" in await _next_line(plain)
        event = events.FileRequested(id=request_id, file_type="login_events")
        await insert_request(db, event, 4)
        assert "queued" in await _next_line(plain)
        assert json.loads(await _next_line(as_json))["status"] == "queued"
        assert await db.requests.request_cancel(request_id) == "cancelled"

        out, err = await asyncio.wait_for(plain.communicate(), 30)
        assert plain.returncode == 1, err  # it ended, but not ready
        assert "cancelled" in out.decode().splitlines()[0]
        assert "state      cancelled" in out.decode()
        out, err = await asyncio.wait_for(as_json.communicate(), 30)
        assert as_json.returncode == 1, err
        [last] = [json.loads(line) for line in out.decode().splitlines()]
        assert last["status"] == "cancelled" and set(last) == STATUS_KEYS
    finally:
        for proc in (plain, as_json):
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_publish_wait_follows_a_real_worker(
    settings: settings_mod.Settings, db: store.Store, spawn: Spawn
) -> None:
    env = settings_env(settings)
    worker = await spawn("worker")
    # One start-up line says what the worker runs with, and no secret.
    [summary] = [line for line in worker.log().splitlines() if " settings: " in line]
    for part in ("storage=local:", "download_mode=stream", "queue=quorum", "concurrency=4"):
        assert part in summary
    assert settings.tokens.secret_keys[0].get_secret_value() not in worker.log()
    assert "guest:guest" not in worker.log()

    done = await run_cli(
        "publish", "blob", "--criteria", '{"size": 300000}', "--timezone", "Europe/Paris",
        "--wait", env=env,
    )  # fmt: skip
    assert done.code == 0, done.err
    first, *lines = done.out.splitlines()
    request_id = uuid.UUID(first)  # the id first, alone on its line: scripts read it
    assert any(line.split()[1].rstrip(",") == "ready" for line in lines), done.out
    assert "state      ready" in done.out
    shown = json.loads((await run_cli("status", first, "--json", env=env)).out)
    assert shown["size"] == 300000 and shown["link"] == {"state": "ready", "generation": 0}
    assert shown["requester"]["timezone"] == "Europe/Paris"  # no email, still a requester
    assert (await db.requests.get_request(request_id)) is not None

    failed = await run_cli("publish", "permanent", "--wait", env=env)
    assert failed.code == 1, failed.err
    assert "state      failed" in failed.out and "PermanentError" in failed.out

    on_terminal = await run_on_terminal("publish", "blob", "--wait", env=env)
    assert on_terminal.code == 0, on_terminal.err
    assert "\x1b[" in on_terminal.out and "100%" in on_terminal.out  # a live bar, drawn
    assert "state      ready" in on_terminal.out


async def test_smtp_sink_prints_and_saves_what_a_worker_sends(
    settings: settings_mod.Settings, spawn: Spawn, tmp_path: Path
) -> None:
    env = settings_env(settings)
    port = free_port()
    saved = tmp_path / "mail"
    sink = await _start(
        "smtp-sink",
        "--port",
        str(port),
        "--save",
        str(saved),
        env=env,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert sink.stderr is not None
        listening = await asyncio.wait_for(sink.stderr.readline(), 30)
        assert f"listening on 127.0.0.1:{port}" in listening.decode()
        taken = await run_cli("smtp-sink", "--port", str(port), env=env)
        assert taken.code == 69 and f"cannot listen on 127.0.0.1:{port}" in taken.err

        await spawn("worker", env={"BGWORKER_SMTP__PORT": str(port)})
        published = await run_cli(
            "publish", "blob", "--email", "ann@example.com", "--wait", env=env
        )
        assert published.code == 0, published.err
        printed = [await _next_line(sink) for _ in range(3)]
        while not printed[-1].startswith("saved:"):
            printed.append(await _next_line(sink))
        assert "to ann@example.com" in printed[0] and "from bgworker" in printed[0]
        assert printed[1].startswith("subject: ") and "blob" in printed[1]
        links = [line.split()[1] for line in printed if line.startswith("link:")]
        # The download link, then the footer's link to the requester's "my files" page.
        assert len(links) == 2 and "/my-files/" in links[1], printed
        [link] = [each for each in links if "/download/" in each]
        assert link.startswith(settings.web.public_url + "/download/")
        [eml] = saved.glob("*.eml")
        assert printed[-1].split()[1] == str(eml)
        message = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
        assert message["To"] == "ann@example.com"

        sink.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(sink.communicate(), 30)
        assert sink.returncode == 0, err
        assert "mail.log" not in err.decode()  # aiosmtpd's chatter stays out
    finally:
        if sink.returncode is None:
            sink.kill()
            await sink.wait()
