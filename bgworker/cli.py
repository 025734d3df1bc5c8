"""The ``bgworker`` command. Flags override ``BGWORKER_*`` settings; ``--help`` names them."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import aiormq
import asyncpg
import pydantic
import uvloop

from bgworker import (
    arguments,
    asyncapi,
    diagnosis,
    events,
    faults,
    handlers,
    links,
    logs,
    loopwatch,
    publisher,
    store,
    tracing,
    worker,
)
from bgworker import settings as settings_mod
from bgworker.deadletters import cli as dlq_cli

log = logging.getLogger("bgworker")

EXIT_UNAVAILABLE = diagnosis.EXIT_UNAVAILABLE  # EX_UNAVAILABLE: a service we need is down
EXIT_USAGE = diagnosis.EXIT_USAGE  # EX_USAGE: bad settings
EXIT_NOT_RECORDED = 3  # `status`: the id is in no row (yet); see docs/reference.md "Exit codes"


def _install_signals(stop: Callable[[], None], what: str) -> None:
    """First SIGTERM/SIGINT: graceful stop. Second: exit at once (leases expire, the
    reaper requeues whatever was running)."""
    loop = asyncio.get_running_loop()
    calls = 0

    def on_signal(signum: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            log.info(
                "%s: %s received, stopping gracefully (again to exit at once)",
                what,
                signal.Signals(signum).name,
            )
            stop()
        else:
            log.warning("%s: second signal, exiting now", what)
            logging.shutdown()
            os._exit(1)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    # A `serve --workers` child starts with both blocked (web/supervisor.py): a stop sent
    # while it was starting is delivered now, to the handler, instead of killing it.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})


async def _cmd_worker(settings: settings_mod.Settings, args: argparse.Namespace) -> int:
    registry = diagnosis.load_handlers(settings.handlers)
    limits = worker.Limits(max_jobs=args.max_jobs, max_seconds=args.max_seconds, burst=args.burst)
    pool = worker.Worker(settings, registry, limits=limits)
    loopwatch.freeze_startup_objects()  # this process's only: tests run workers in theirs
    _install_signals(pool.stop, "worker")
    try:
        await pool.run()
    except handlers.LifespanError as exc:
        # The resources handlers share could not be opened: a service they need is away
        # (69) or their configuration is wrong (64). One line either way, no traceback.
        cause = exc.__cause__
        unavailable = cause is not None and faults.is_infrastructure(cause)
        line = f"{exc} (BGWORKER_HANDLERS: {', '.join(settings.handlers)})"
        raise (diagnosis.unavailable(line) if unavailable else diagnosis.config(line)) from exc
    return 1 if pool.crashed else 0


async def _cmd_serve(settings: settings_mod.Settings, args: argparse.Namespace) -> int:
    from bgworker import web
    from bgworker.web import supervisor

    if settings.web.workers > 1:  # a parent that runs N of the branch below
        w = settings.web
        if taken := supervisor.port_taken(w.host, w.port):
            raise diagnosis.unavailable(taken)
        return await supervisor.Supervisor(w.workers, w.host, w.port).run()
    stop = asyncio.Event()
    _install_signals(stop.set, "server")
    await web.serve(settings, stop, parent=args.parent)
    return 0


async def _cmd_migrate(settings: settings_mod.Settings, args: argparse.Namespace) -> int:
    from bgworker.store import migrations

    dsn = settings.database_url.get_secret_value()
    if await store.ensure_database(dsn):
        print(f"created database {dsn.rsplit('/', 1)[-1]}")
    conn = await asyncpg.connect(dsn)
    try:
        applied = await migrations.apply(conn)
    finally:
        await conn.close()
    for m in applied:
        print(f"applied {m.version:04d}_{m.name}")
    if not applied:
        print("database is up to date")
    return 0


def _build_request(args: argparse.Namespace) -> events.FileRequested:
    try:
        criteria = json.loads(args.criteria)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"--criteria is not JSON: {exc}") from None
    requester = None
    if args.email or args.requester_id:
        requester = {
            "id": args.requester_id,
            "email": args.email,
            "language": args.language,
            "timezone": args.timezone,
        }
    raw: dict[str, Any] = {
        "id": args.id or str(uuid.uuid4()),
        "file_type": args.file_type,
        "criteria": criteria,
        # Left out, the worker uses what the file type's handler declares.
        "filename": args.filename,
        "content_type": args.content_type,
        "description": args.description,
        "requester": requester,
    }
    if args.lifetime:
        raw["lifetime_seconds"] = args.lifetime
    try:
        return events.FileRequested.model_validate(raw)
    except pydantic.ValidationError as exc:
        raise SystemExit(f"invalid request: {events.describe_validation_error(exc)}") from None


async def _cmd_publish(settings: settings_mod.Settings, args: argparse.Namespace) -> int:
    event = _build_request(args)
    async with publisher.Publisher(
        settings.amqp_url.get_secret_value(),
        namespace=settings.namespace,
        queue_type=settings.queue_type,
    ) as pub:
        await pub.publish(event)
    print(event.id)
    return 0


async def _cmd_cancel(settings: settings_mod.Settings, args: argparse.Namespace) -> int:
    async with store.opened(settings.database_url.get_secret_value()) as db:
        status = await db.request_cancel(args.id)
        row = await db.get_request(args.id)
    if status is None:
        state = row.status if row else "unknown to this database"
        print(f"{args.id}: not cancellable (status: {state})", file=sys.stderr)
        return 1
    print(f"{args.id}: {'cancelling (running)' if status == 'running' else 'cancelled'}")
    return 0


async def _cmd_status(settings: settings_mod.Settings, args: argparse.Namespace) -> int:
    async with store.opened(settings.database_url.get_secret_value()) as db:
        row = await db.get_request(args.id)
        attempts = await db.list_attempts(args.id) if row else []
        effects = await db.listing.effects(args.id) if row else []  # a given-up webhook too
    if row is None:
        # Producers publish without writing to the database: a request exists here only
        # once a worker has taken (or rejected) its message.
        print(
            f"{args.id}: not recorded yet: no worker has taken it; it may be waiting in the "
            "queue (or the id is wrong)",
            file=sys.stderr,
        )
        return EXIT_NOT_RECORDED
    out = row.to_json()
    out.pop("lease_token", None)
    out["percent"] = row.percent  # 65.0: the fraction for people
    out["attempt_log"] = attempts
    out["effects"] = effects
    print(json.dumps(out, indent=2, default=_json_value))
    return 0


def _json_value(value: object) -> str:
    # Timestamps as ISO 8601, anything else (UUIDs) as text.
    isoformat = getattr(value, "isoformat", None)
    return str(isoformat()) if callable(isoformat) else str(value)


async def _cmd_clean(settings: settings_mod.Settings, args: argparse.Namespace) -> int:
    from bgworker import cleanup, storage

    async with (
        store.opened(settings.database_url.get_secret_value()) as db,
        storage.opened(settings) as files,
    ):
        report = await cleanup.clean(
            db,
            files,
            leeway_seconds=args.leeway,
            orphan_age_seconds=args.orphan_age,
            timeout_seconds=args.timeout,
            sleep_seconds=args.sleep,
            dry_run=args.dry_run,
        )
    verb = "would remove" if args.dry_run else "removed"
    print(
        f"{verb}: {report.expired} expired file(s), {report.orphans} orphaned file(s), "
        f"{report.temp_parts} temp part(s), {report.front_door} front-door record(s); "
        f"{report.bytes_freed} bytes freed"
        + ("; stopped at --timeout" if report.stopped_early else "")
    )
    return 0


def _cmd_schemas(settings: settings_mod.Settings, args: argparse.Namespace) -> int:
    stale = asyncapi.export(Path(args.dir), check=args.check)
    if args.check and stale:
        print(f"out of date: {', '.join(stale)}; run `bgworker schemas export`", file=sys.stderr)
        return 1
    return 0


def _cmd_demo(settings: settings_mod.Settings, args: argparse.Namespace) -> int:
    from bgworker import demo

    return demo.main(rows=args.rows)


def _apply_flags(
    settings: settings_mod.Settings, args: argparse.Namespace
) -> settings_mod.Settings:
    if getattr(args, "concurrency", None):
        settings.worker.concurrency = args.concurrency
    if getattr(args, "host", None):
        settings.web.host = args.host
    if getattr(args, "port", None):
        settings.web.port = args.port
    if getattr(args, "workers", None):
        settings.web.workers = args.workers
    if getattr(args, "metrics_port", None) is not None:
        settings.metrics.port = args.metrics_port
    return settings


ASYNC_COMMANDS: dict[
    str, Callable[[settings_mod.Settings, argparse.Namespace], Coroutine[Any, Any, int]]
] = {
    "worker": _cmd_worker,
    "serve": _cmd_serve,
    "migrate": _cmd_migrate,
    "publish": _cmd_publish,
    "cancel": _cmd_cancel,
    "status": _cmd_status,
    "clean": _cmd_clean,
    "dlq": dlq_cli.run,
    "link": links.run,
    "revoke": links.run,
    "resend": links.run,
}


def main(argv: list[str] | None = None) -> int:
    args = arguments.parser().parse_args(argv)
    try:
        settings = _apply_flags(settings_mod.Settings(), args)
    except pydantic.ValidationError as exc:
        return _fail(args, diagnosis.settings_error(exc))
    try:
        diagnosis.check_settings(settings, args.command)
    except diagnosis.StartupError as exc:
        return _fail(args, exc)
    logs.configure(settings.log_level, settings.log_format)
    if settings.tracing.enabled:
        try:
            tracing.configure(settings.tracing.service_name)
        except tracing.TracingUnavailableError as exc:
            return _fail(args, diagnosis.config(str(exc)))
    if args.command == "schemas":
        return _cmd_schemas(settings, args)
    if args.command == "demo":
        return _cmd_demo(settings, args)
    try:
        # The worker on uvloop: less CPU per job (BENCHMARKS.md, issue 11). The rest keep
        # asyncio's loop: aiohttp's FileResponse needs its sendfile, which uvloop lacks.
        loop = uvloop.new_event_loop if args.command == "worker" else None
        with asyncio.Runner(loop_factory=loop) as runner:
            return runner.run(_run(settings, args))
    except diagnosis.StartupError as exc:
        return _fail(args, exc)
    except (*store.TRANSIENT_ERRORS, aiormq.exceptions.AMQPError) as exc:
        # A service went away after the probe (or `migrate`, which probes nothing).
        return _fail(args, diagnosis.service_error(exc, settings))
    except KeyboardInterrupt:
        return 130


async def _run(settings: settings_mod.Settings, args: argparse.Namespace) -> int:
    await diagnosis.probe(settings, args.command)
    return await ASYNC_COMMANDS[args.command](settings, args)


def _fail(args: argparse.Namespace, exc: diagnosis.StartupError) -> int:
    print(f"bgworker {args.command}: {exc.line}", file=sys.stderr)
    return exc.code


if __name__ == "__main__":
    sys.exit(main())
