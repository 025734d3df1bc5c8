"""The `bgworker` command as an operator uses it: publish, migrate, schemas, help, status,
cancel."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import aio_pika
import asyncpg

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.cli.smtp_sink import SmtpSink
from bgworker.contract import events
from bgworker.messaging import topology
from bgworker.store import migrations
from tests.acceptance.processes import Spawn, run_cli
from tests.helpers import REPO, db_url, drop_database, insert_request, settings_env, wait_for_status


async def test_publish_prints_the_id_and_a_worker_makes_it_ready(
    settings: settings_mod.Settings,
    db: store.Store,
    amqp: aio_pika.abc.AbstractChannel,
    spawn: Spawn,
    smtp_sink: SmtpSink,
) -> None:
    env = settings_env(settings)
    result = await run_cli(
        "publish",
        "login_events",
        "--criteria",
        '{"rows": 10}',
        "--email",
        "x@example.com",
        env=env,
    )
    assert result.code == 0, result.err
    request_id = uuid.UUID(result.out.strip().splitlines()[-1])

    worker = await spawn("worker")
    row = await wait_for_status(db, request_id, {"ready", "failed"})
    assert row.status == "ready", worker.log()
    assert row.requester_email == "x@example.com"
    assert row.size_bytes is not None and row.size_bytes > 0
    [mail] = await smtp_sink.wait_for(1, timeout=30)
    assert mail["To"] == "x@example.com"


async def test_publish_rejects_bad_criteria_and_bad_email(
    settings: settings_mod.Settings, amqp: aio_pika.abc.AbstractChannel
) -> None:
    env = settings_env(settings)
    bad_json = await run_cli("publish", "login_events", "--criteria", "{rows: 10}", env=env)
    assert bad_json.code != 0
    assert "--criteria is not JSON" in bad_json.err

    not_object = await run_cli("publish", "login_events", "--criteria", "[1, 2]", env=env)
    assert not_object.code != 0
    assert "criteria" in not_object.err

    bad_email = await run_cli(
        "publish", "login_events", "--email", "not-an-address", "--criteria", "{}", env=env
    )
    assert bad_email.code != 0
    assert "invalid request" in bad_email.err and "requester.email" in bad_email.err
    # Nothing was printed as if published.
    assert bad_json.out == bad_email.out == ""

    # A requester's time zone and language are checked with an email or without one (the
    # contract lets a requester carry only them); 0 is a lifetime, and refused.
    for extra in ((), ("--email", "x@example.com")):
        zone = await run_cli("publish", "login_events", "--timezone", "Mars/Base", *extra, env=env)
        assert (zone.code, zone.out) == (1, "") and "requester.timezone" in zone.err
    for flag, value, field in (
        ("--language", "not a language", "requester.language"),
        ("--lifetime", "0", "lifetime_seconds"),
        ("--callback-url", "ftp://example.com/hook", "callback_url"),
    ):
        refused = await run_cli("publish", "login_events", flag, value, env=env)
        assert (refused.code, refused.out) == (1, "") and field in refused.err, flag


async def test_publish_puts_every_flag_in_the_event(
    settings: settings_mod.Settings, amqp: aio_pika.abc.AbstractChannel
) -> None:
    result = await run_cli(
        "publish", "login_events", "--timezone", "Europe/Paris", "--language", "de",
        "--callback-url", "http://127.0.0.1:9/hook", "--lifetime", "120",
        env=settings_env(settings),
    )  # fmt: skip
    assert result.code == 0, result.err
    queue = await amqp.get_queue(topology.Topology(settings.namespace).work_queue)
    message = await queue.get(no_ack=True, timeout=10)
    assert message is not None
    body = json.loads(message.body)
    assert body["id"] == result.out.strip()
    assert body["requester"]["timezone"] == "Europe/Paris"  # was dropped without --email
    assert body["requester"]["language"] == "de" and body["requester"]["email"] is None
    assert body["callback_url"] == "http://127.0.0.1:9/hook"
    assert body["lifetime_seconds"] == 120


async def test_migrate_creates_a_fresh_database_and_is_idempotent(
    settings: settings_mod.Settings,
) -> None:
    name = f"bgw_cli_{uuid.uuid4().hex[:10]}"
    env = {**settings_env(settings), "BGWORKER_DATABASE_URL": db_url(name)}
    try:
        first = await run_cli("migrate", env=env)
        assert first.code == 0, first.err
        assert f"created database {name}" in first.out
        for m in migrations.available():
            assert f"applied {m.version:04d}_{m.name}" in first.out
            # Said once: the runner's own log line is DEBUG.
            assert (first.out + first.err).count(f"{m.version:04d}_{m.name}") == 1

        second = await run_cli("migrate", env=env)
        assert second.code == 0, second.err
        assert "database is up to date" in second.out
        assert "applied" not in second.out

        conn = await asyncpg.connect(db_url(name))
        try:
            versions = await conn.fetch("SELECT version FROM bgworker_migrations")
            assert await conn.fetchval("SELECT to_regclass('bgworker_requests') IS NOT NULL")
        finally:
            await conn.close()
        assert sorted(r["version"] for r in versions) == [m.version for m in migrations.available()]
    finally:
        await drop_database(name)


async def test_schemas_check_passes_on_the_repo_and_fails_when_stale(tmp_path: Path) -> None:
    env = settings_env(settings_mod.Settings())
    ok = await run_cli("schemas", "export", "--check", env=env, cwd=REPO)
    assert ok.code == 0, ok.err

    stale = tmp_path / "schemas"
    stale.mkdir()
    (stale / "FileReady.json").write_text("{}\n")
    bad = await run_cli("schemas", "export", "--check", "--dir", str(stale), env=env)
    assert bad.code != 0
    assert "out of date" in bad.err and "FileReady.json" in bad.err


async def test_help_lists_every_setting_variable() -> None:
    result = await run_cli("--help", env=settings_env(settings_mod.Settings()))
    assert result.code == 0
    names = [name for name, _ in settings_mod.env_names()]
    assert "BGWORKER_TOKENS__SECRET_KEYS" in names
    missing = [name for name in names if name not in result.out]
    assert missing == []
    # Lists as the environment writes them, not as Python reprs.
    assert "BGWORKER_WORKER__RETRY_DELAYS_SECONDS=5.0,30.0,300.0" in result.out
    assert "BGWORKER_HANDLERS=bgworker.examples:registry" in result.out
    assert "['" not in result.out and "[5.0" not in result.out


async def test_status_and_cancel_a_queued_request(
    settings: settings_mod.Settings, db: store.Store
) -> None:
    env = settings_env(settings)
    event = events.FileRequested(
        id=uuid.uuid4(), file_type="login_events", criteria={"rows": 5}, filename="l.csv"
    )
    await insert_request(db, event, 4)

    status = await run_cli("status", str(event.id), "--json", env=env)
    assert status.code == 0, status.err
    shown = json.loads(status.out)
    assert shown["id"] == str(event.id)
    assert shown["status"] == "queued"
    assert shown["attempt_log"] == []
    assert "lease_token" not in shown

    cancel = await run_cli("cancel", str(event.id), env=env)
    assert cancel.code == 0, cancel.err
    assert f"{event.id}: cancelled" in cancel.out
    row = await db.requests.get_request(event.id)
    assert row is not None and row.status == "cancelled" and row.cancel_requested

    again = await run_cli("cancel", str(event.id), env=env)
    assert again.code == 1
    assert "not cancellable (status: cancelled)" in again.err

    after = await run_cli("status", str(event.id), env=env)
    assert "state      cancelled" in after.out


async def test_status_of_unknown_request_and_unreachable_database(
    settings: settings_mod.Settings,
) -> None:
    env = settings_env(settings)
    unknown = uuid.uuid4()
    result = await run_cli("status", str(unknown), env=env)
    assert result.code == 3  # docs/reference.md "Exit codes": not recorded (yet)
    assert f"{unknown}: not recorded yet: no worker has taken it" in result.err
    assert "may be waiting in the queue" in result.err

    down = {**env, "BGWORKER_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/nothing"}
    result = await run_cli("status", str(unknown), env=down)
    assert result.code == 69  # EX_UNAVAILABLE
    assert "bgworker status: cannot reach PostgreSQL at 127.0.0.1:1" in result.err
