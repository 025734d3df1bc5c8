"""The ``bgworker`` command. Flags override ``BGWORKER_*`` settings; ``--help`` names them.

Only the parser is imported before the arguments are parsed: each command imports what it
uses (the clients of RabbitMQ, PostgreSQL and S3, the web server, the metrics), so ``--help``
and a mistyped flag answer at once (``tests/unit/test_arguments.py``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final

from bgworker.cli import arguments
from bgworker.cli.output import OutputClosedError, guard_stdout, output_closed, say

if TYPE_CHECKING:
    from bgworker import settings as settings_mod
    from bgworker.cli import diagnosis
    from bgworker.contract import events

# Not imported here either: asyncio and logging (with ssl, concurrent.futures), a third of
# what `bgworker --help` would load.
EXIT_FAILED: Final = 1  # refused (overview.EXIT_UNSUCCESSFUL: a followed request failed)
EXIT_ARGUMENTS: Final = 2  # as argparse exits for an unknown option


# -- commands -------------------------------------------------------------------------


def _install_signals(stop: Callable[[], None], what: str) -> None:
    """First SIGTERM/SIGINT: graceful stop. Second: exit at once (leases expire, the
    reaper requeues whatever was running)."""
    import asyncio
    import logging
    import signal

    log = logging.getLogger("bgworker")
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
    from bgworker import faults, handlers, worker
    from bgworker.cli import diagnosis
    from bgworker.worker import loopwatch

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
    import asyncio

    from bgworker import web
    from bgworker.cli import diagnosis
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


async def _cmd_publish(settings: settings_mod.Settings, args: argparse.Namespace) -> int:
    from bgworker.cli import diagnosis
    from bgworker.messaging import publisher

    event: events.FileRequested = args.event  # built and checked before connecting (_prepare)
    if args.wait:  # following needs the database: say now if it cannot be reached
        await diagnosis.probe(settings, "status")
    async with publisher.Publisher(
        settings.amqp_url.get_secret_value(),
        namespace=settings.namespace,
        queue_type=settings.queue_type,
    ) as pub:
        await pub.publish(event)
    print(event.id, flush=True)  # first, alone on its line: scripts read it
    if not args.wait:
        return 0
    from bgworker.ops import overview

    return await overview.wait(settings, event.id)


async def _cmd_cancel(settings: settings_mod.Settings, args: argparse.Namespace) -> int:
    from bgworker import store

    async with store.opened(
        settings.database_url.get_secret_value(), pooler=settings.database_pooler
    ) as db:
        status = await db.requests.request_cancel(args.id)
        row = await db.requests.get_request(args.id)
    if status is None:
        state = row.status if row else "unknown to this database"
        say("cancel", f"{args.id}: not cancellable (status: {state})")
        return EXIT_FAILED
    print(f"{args.id}: {'cancelling (running)' if status == 'running' else 'cancelled'}")
    return 0


# The commands whose module has its own `run(settings, args)`: imported when one runs.
async def _cmd_links(settings: settings_mod.Settings, args: argparse.Namespace) -> int:
    from bgworker.links import lifecycle

    return await lifecycle.run(settings, args)


async def _cmd_dlq(settings: settings_mod.Settings, args: argparse.Namespace) -> int:
    from bgworker.ops.deadletters import cli as dlq_cli

    return await dlq_cli.run(settings, args)


async def _cmd_schedules(settings: settings_mod.Settings, args: argparse.Namespace) -> int:
    from bgworker.ops import schedules

    return await schedules.run(settings, args)


async def _cmd_status(settings: settings_mod.Settings, args: argparse.Namespace) -> int:
    if (args.id is None) == (args.tenant is None):
        say("status", "give a request id or --tenant T (one of them)")
        return EXIT_ARGUMENTS
    if args.tenant is not None:
        from bgworker.ops import tenants

        return await tenants.run(settings, args)
    from bgworker.ops import overview

    return await overview.run(settings, args)


async def _cmd_clean(settings: settings_mod.Settings, args: argparse.Namespace) -> int:
    from bgworker import ops  # clean, forget, relay

    return await ops.run(settings, args)


async def _cmd_migrate(settings: settings_mod.Settings, args: argparse.Namespace) -> int:
    from bgworker.store import migrations

    return await migrations.run(settings, args)


async def _cmd_smtp_sink(settings: settings_mod.Settings, args: argparse.Namespace) -> int:
    import asyncio
    from pathlib import Path

    from bgworker.cli import diagnosis, smtp_sink

    host, port = args.host or settings.smtp.host, args.port or settings.smtp.port
    save = Path(args.save) if args.save else None
    stop = asyncio.Event()
    _install_signals(stop.set, "smtp-sink")
    try:
        await smtp_sink.serve(host, port, sys.stdout, stop, save_dir=save)
    except smtp_sink.ListenError as exc:
        raise diagnosis.unavailable(str(exc)) from None
    return 0


def _cmd_schemas(settings: settings_mod.Settings, args: argparse.Namespace) -> int:
    from pathlib import Path

    from bgworker.messaging import asyncapi

    stale = asyncapi.export(Path(args.dir), check=args.check)
    if args.check and stale:
        say("schemas", f"out of date: {', '.join(stale)}; run `bgworker schemas export`")
        return EXIT_FAILED
    return 0


def _cmd_demo(settings: settings_mod.Settings, args: argparse.Namespace) -> int:
    from bgworker.cli import demo

    return demo.main(rows=args.rows)


def _apply_flags(
    settings: settings_mod.Settings, args: argparse.Namespace
) -> settings_mod.Settings:
    if getattr(args, "concurrency", None):
        settings.worker.concurrency = args.concurrency
    if args.command == "serve":  # smtp-sink's --host and --port are its own
        if args.host:
            settings.web.host = args.host
        if args.port:
            settings.web.port = args.port
    if getattr(args, "workers", None):
        settings.web.workers = args.workers
    if getattr(args, "metrics_port", None) is not None:
        settings.metrics.port = args.metrics_port
    return settings


Command = Callable[["settings_mod.Settings", argparse.Namespace], Coroutine[Any, Any, int]]
ASYNC_COMMANDS: Final[dict[str, Command]] = {
    "worker": _cmd_worker,
    "serve": _cmd_serve,
    "migrate": _cmd_migrate,
    "publish": _cmd_publish,
    "cancel": _cmd_cancel,
    "status": _cmd_status,
    "clean": _cmd_clean,
    "forget": _cmd_clean,
    "relay": _cmd_clean,
    "dlq": _cmd_dlq,
    "schedules": _cmd_schedules,
    "link": _cmd_links,
    "revoke": _cmd_links,
    "resend": _cmd_links,
    "smtp-sink": _cmd_smtp_sink,
}


# The commands that run without an event loop.
SYNC_COMMANDS: Final[dict[str, Callable[[settings_mod.Settings, argparse.Namespace], int]]] = {
    "schemas": _cmd_schemas,
    "demo": _cmd_demo,
}


def main(argv: list[str] | None = None) -> int:
    guard_stdout()
    try:
        try:
            return _main(argv)
        finally:
            if sys.stdout is not None:
                sys.stdout.flush()  # what is still buffered: a closed pipe shows here too
    except OutputClosedError:
        return output_closed()


def _main(argv: list[str] | None) -> int:
    args = arguments.parser().parse_args(argv)
    # Imported once the arguments are known to be good (see the module's docstring).
    import asyncio

    import aiormq
    import pydantic

    from bgworker import settings as settings_mod
    from bgworker import store
    from bgworker.cli import diagnosis

    try:
        settings = _apply_flags(settings_mod.Settings(), args)
    except pydantic.ValidationError as exc:
        return _fail(args, diagnosis.settings_error(exc))
    try:
        _prepare(settings, args)
    except diagnosis.StartupError as exc:
        return _fail(args, exc)
    if args.command in SYNC_COMMANDS:
        return SYNC_COMMANDS[args.command](settings, args)
    try:
        loop = None
        if args.command == "worker":
            # The worker on uvloop: less CPU per job (BENCHMARKS.md, issue 11). The rest
            # keep asyncio's loop: aiohttp's FileResponse needs its sendfile, which uvloop
            # lacks.
            import uvloop

            loop = uvloop.new_event_loop
        with asyncio.Runner(loop_factory=loop) as runner:
            return runner.run(_run(settings, args))
    except diagnosis.StartupError as exc:
        return _fail(args, exc)
    except (*store.TRANSIENT_ERRORS, aiormq.exceptions.AMQPError) as exc:
        # A service went away after the probe (or `migrate`, which probes nothing).
        return _fail(args, diagnosis.service_error(exc, settings))
    except KeyboardInterrupt:
        return 130


def _prepare(settings: settings_mod.Settings, args: argparse.Namespace) -> None:
    """What is checked and set up before any command runs: the settings it depends on,
    logging and tracing, and a request to publish (refused before anything connects)."""
    from bgworker.cli import diagnosis
    from bgworker.observe import logs, tracing

    diagnosis.check_settings(settings, args.command)
    logs.configure(settings.log_level, settings.log_format)
    if settings.tracing.enabled:
        try:
            tracing.configure(settings.tracing.service_name)
        except tracing.TracingUnavailableError as exc:
            raise diagnosis.config(str(exc)) from None
    if args.command == "publish":
        from bgworker.messaging import publisher

        try:
            args.event = publisher.from_flags(args)
        except ValueError as exc:
            raise diagnosis.StartupError(str(exc), EXIT_FAILED) from None


async def _run(settings: settings_mod.Settings, args: argparse.Namespace) -> int:
    from bgworker.cli import diagnosis

    await diagnosis.probe(settings, args.command)
    return await ASYNC_COMMANDS[args.command](settings, args)


def _fail(args: argparse.Namespace, exc: diagnosis.StartupError) -> int:
    say(args.command, exc.line)
    return exc.code


if __name__ == "__main__":
    sys.exit(main())
