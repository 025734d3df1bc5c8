"""``python -m bench.smtp [--emails N] [--reps R]``: what reusing SMTP connections saves.

``notify.Mailer`` sends N rendered emails to the aiosmtpd sink (``bgworker.cli.smtp_sink``, run
in a child process so its CPU is not counted as the sender's), once with connection reuse
(the default ``SMTP__IDLE_SECONDS``) and once with ``IDLE_SECONDS=0`` (a connection per
email, as before), one send at a time and 4 at once (a worker's outbox sends the emails of
concurrent jobs). The repetitions alternate the two modes. Printed per email: wall time,
the sender's CPU (this process: aiosmtplib, the event loop) and the sink's CPU, medians of
the repetitions; the emails are rendered before the clock starts. The sender runs on uvloop
as the worker does (``--loop asyncio``: asyncio's loop). Printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Final

import uvloop

from bench import common
from bgworker import settings as settings_mod
from bgworker.cli.smtp_sink import SmtpSink, free_port
from bgworker.effects import mail

MODES: Final = {"reuse": 10.0, "per email (IDLE_SECONDS=0)": 0.0}
CONCURRENCY: Final = (1, 4)


async def _serve(port: int) -> None:
    """The child: the sink until SIGTERM."""
    async with SmtpSink(port=port):
        await asyncio.Event().wait()


async def _wait_port(port: int, child: common.Child, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        child.check_alive()
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
            continue
        writer.close()
        await writer.wait_closed()
        return


def _emails(n: int) -> list[EmailMessage]:
    sender = settings_mod.SmtpSettings().sender
    return [
        mail.render(
            "ready",
            f"user{i}@example.com",
            sender,
            {
                "request_id": f"bench-{i}",
                "filename": "logins.csv",
                "size": 10_240,
                "expires_at": "2026-12-01T10:00:00+00:00",
                "download_url": "http://127.0.0.1:8080/download/TOKEN",
            },
        )
        for i in range(n)
    ]


async def _trial(
    port: int, sink_pid: int, idle_seconds: float, concurrency: int, emails: list[EmailMessage]
) -> tuple[float, float, float, int]:
    """Wall, sender CPU and sink CPU in ms per email, and connections made."""
    config = settings_mod.SmtpSettings(port=port, idle_seconds=idle_seconds)
    mailer = mail.Mailer(config)
    queue = list(reversed(emails))

    async def accepted() -> None:
        pass

    async def sender() -> None:
        while queue:
            await mailer.send(queue.pop(), accepted)

    sink_cpu = common.cpu_seconds([sink_pid])
    cpu = time.process_time()
    wall = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(concurrency)))
    await mailer.close()  # the QUITs belong to the cost of reuse
    wall = time.perf_counter() - wall
    cpu = time.process_time() - cpu
    # The sink's last QUITs: let it account for them (its clock ticks are 10 ms coarse).
    await asyncio.sleep(0.2)
    sink_cpu = common.cpu_seconds([sink_pid]) - sink_cpu
    n = len(emails)
    return wall * 1000 / n, cpu * 1000 / n, sink_cpu * 1000 / n, mailer.connections_made


async def main(emails: int, reps: int, loop: str) -> None:
    port = free_port()
    with tempfile.TemporaryDirectory() as logdir:
        child = common.python_child(
            "smtp-sink", ["bench.smtp", "--sink", str(port)], common.child_env({}), Path(logdir)
        )
        try:
            await _wait_port(port, child)
            rendered = _emails(emails)
            figures: dict[tuple[str, int], list[common.Series]] = {}
            made: dict[tuple[str, int], int] = {}
            for rep in range(reps):
                for concurrency in CONCURRENCY:
                    for mode, idle in MODES.items():
                        result = await _trial(port, child.pid, idle, concurrency, rendered)
                        series = figures.setdefault(
                            (mode, concurrency), [common.Series() for _ in range(3)]
                        )
                        for s, value in zip(series, result[:3], strict=True):
                            s.add(value)
                        made[(mode, concurrency)] = result[3]
                common.log(f"repetition {rep + 1}/{reps} done")
            print(f"\nsender on {loop}")
            _print(figures, made, emails, reps)
        finally:
            await child.stop()


def _print(
    figures: dict[tuple[str, int], list[common.Series]],
    made: dict[tuple[str, int], int],
    emails: int,
    reps: int,
) -> None:
    print(f"\n{emails} emails per trial, {reps} repetitions, medians [min-max]\n")
    print(
        "| sends at once | mode | connections | ms wall/email | ms sender CPU/email "
        "| ms sink CPU/email |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for (mode, concurrency), series in figures.items():
        cells = [f"{s.median:.3f} [{min(s.values):.3f}-{max(s.values):.3f}]" for s in series]
        print(f"| {concurrency} | {mode} | {made[(mode, concurrency)]} | {' | '.join(cells)} |")


def cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.smtp", description=__doc__)
    parser.add_argument("--emails", type=int, default=500, help="emails per trial")
    parser.add_argument("--reps", type=int, default=5, help="repetitions of each trial")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--sink", type=int, help=argparse.SUPPRESS)  # the child's port
    args = parser.parse_args()
    if args.sink is not None:
        asyncio.run(_serve(args.sink))
        return
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if args.loop == "uvloop":
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main(args.emails, args.reps, args.loop))


if __name__ == "__main__":
    cli()
