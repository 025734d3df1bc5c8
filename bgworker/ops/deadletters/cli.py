"""``bgworker dlq list|show|stats|replay|purge``: the dead-letter queue from a terminal (the
arguments are in ``bgworker.cli.arguments``, with every other command's)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import logging
import socket
import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import Final, TextIO

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.ops.deadletters import actions, letters, queue, reading, selection

EXIT_UNAVAILABLE: Final = 69
EXIT_USAGE: Final = 64
EXIT_NOT_FOUND: Final = 1


def _selection(args: argparse.Namespace) -> selection.Selection:
    return selection.Selection(
        ids=frozenset(getattr(args, "ids", None) or ()),
        file_type=args.file_type,
        error_class=args.error_class,
        reason=args.reason,
        older_than=args.older_than,
        newer_than=args.newer_than,
        everything=bool(getattr(args, "all", False)),
    )


def actor() -> str:
    with contextlib.suppress(Exception):
        return f"cli:{getpass.getuser()}@{socket.gethostname()}"
    return "cli"


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _age(value: timedelta | None) -> str:
    if value is None:
        return "-"
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _cut(text: str | None, width: int) -> str:
    text = (text or "").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def print_table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)


class StderrProgress:
    """``replay 120/500 [#####.....]`` on a terminal; silent when stderr is not one."""

    def __init__(self, what: str, stream: TextIO = sys.stderr) -> None:
        self.what = what
        self.stream = stream
        self.enabled = stream.isatty()

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        filled = int(30 * min(done, total) / total)
        bar = "#" * filled + "." * (30 - filled)
        self.stream.write(f"\r{self.what} {done}/{total} [{bar}]")
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()


async def _list(q: queue.DeadLetterQueue, args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    if args.json:
        # Streamed: one element per letter as it is read.
        sys.stdout.write("[")
        first = True
        try:
            async for letter in reading.matching(q, _selection(args)):
                sys.stdout.write(("\n" if first else ",\n") + letters.dumps(letter.to_json()))
                first = False
        finally:
            sys.stdout.write("\n]\n")  # valid JSON even when a letter stops the scan
        return 0
    rows = [["ID", "FILE TYPE", "REASON", "ERROR CLASS", "TRIES", "FIRST DEATH", "LAST DEATH"]]
    rows[0] += ["AGE", "MESSAGE"]
    async for letter in reading.matching(q, _selection(args)):
        rows.append(
            [
                letter.key,
                letter.file_type or "?",
                letter.reason,
                letter.error_class,
                "-" if letter.attempts is None else str(letter.attempts),
                _when(letter.first_death),
                _when(letter.last_death),
                _age(letter.age(now)),
                _cut(letter.error, 50),
            ]
        )
    print_table(rows, sys.stdout)
    print(f"{len(rows) - 1} dead letter(s) in {q.name}", file=sys.stderr)
    return 0


async def _show(
    q: queue.DeadLetterQueue, settings: settings_mod.Settings, args: argparse.Namespace
) -> int:
    found = await reading.show(q, args.id)
    if found is None:
        print(f"no dead letter {args.id} in {q.name}", file=sys.stderr)
        return EXIT_NOT_FOUND
    request_id = found.get("request_id")
    if request_id:
        with contextlib.suppress(*store.TRANSIENT_ERRORS):
            async with store.opened(
                settings.database_url.get_secret_value(), pooler=settings.database_pooler
            ) as db:
                row = await db.requests.get_request(uuid.UUID(request_id))
                found["request"] = (
                    None
                    if row is None
                    else {k: row.to_json()[k] for k in ("status", "attempts", "max_attempts")}
                )
                found["dlq_actions"] = await db.dead_letters.list_actions(uuid.UUID(request_id))
    print(letters.dumps(found, indent=2))
    return 0


async def _stats(q: queue.DeadLetterQueue, args: argparse.Namespace) -> int:
    result = await reading.stats(q, _selection(args))
    if args.json:
        print(letters.dumps(result.to_json(), indent=2))
        return 0
    rows = [["FILE TYPE", "ERROR CLASS", "COUNT"]]
    for group in result.to_json()["groups"]:
        rows.append([group["file_type"], group["error_class"], str(group["count"])])
    print_table(rows, sys.stdout)
    reasons = ", ".join(f"{r}={n}" for r, n in result.by_reason.most_common()) or "-"
    print(f"\ntotal {result.total} in {q.name}; by reason: {reasons}")
    print(f"oldest {_when(result.oldest)}  newest {_when(result.newest)}")
    return 0


def _print_report(report: actions.Report, args: argparse.Namespace) -> None:
    if args.json:
        print(letters.dumps(report.to_json(), indent=2))
        return
    for o in report.outcomes:
        if o.result not in (actions.Result.REPLAYED, actions.Result.PURGED):
            print(f"{o.key}: {o.result}{': ' + o.detail if o.detail else ''}")
    counts = ", ".join(f"{k} {v}" for k, v in sorted(report.counts.items())) or "nothing matched"
    if report.dry_run:
        tail = f"scanned {report.scanned}; dry run: nothing changed"
    else:
        tail = f"scanned {report.scanned}, removed from the queue: {report.removed}"
    print(f"{report.action}: {counts}; {tail}")


async def _act(
    q: queue.DeadLetterQueue, settings: settings_mod.Settings, args: argparse.Namespace
) -> int:
    chosen = _selection(args)
    if getattr(args, "undecodable", False):
        return await _purge_undecodable(q, settings, args)
    if chosen.is_empty:
        print(f"dlq {args.dlq_command}: name ids, give a filter, or pass --all", file=sys.stderr)
        return EXIT_USAGE
    async with store.opened(
        settings.database_url.get_secret_value(), pooler=settings.database_pooler
    ) as db:
        if args.dlq_command == "purge" and not (args.yes or args.dry_run):
            preview = await actions.purge(q, db, chosen, actor=actor(), dry_run=True)
            if not preview.outcomes:
                print("purge: nothing matched")
                return 0
            question = f"purge {len(preview.outcomes)} dead letter(s) for good?"
            if (declined := await _confirm(question)) is not None:
                return declined
        progress = StderrProgress(args.dlq_command)
        if args.dlq_command == "replay":
            report = await actions.replay(
                q,
                db,
                chosen,
                actor=actor(),
                keep_attempts=args.keep_attempts,
                force=args.force,
                dry_run=args.dry_run,
                progress=progress,
            )
        else:
            report = await actions.purge(
                q, db, chosen, actor=actor(), dry_run=args.dry_run, progress=progress
            )
    _print_report(report, args)
    refused = [o for o in report.outcomes if o.result is actions.Result.REFUSED]
    for outcome in refused:
        print(f"bgworker dlq replay: {outcome.detail}", file=sys.stderr)
    return EXIT_NOT_FOUND if refused else 0


async def _confirm(question: str) -> int | None:
    """Ask on the terminal; None when the answer is yes, else the exit status. Without a
    terminal nobody can answer: refuse at once, saying what to pass instead."""
    if not sys.stdin.isatty():
        print(
            f"bgworker dlq purge: no terminal to ask {question!r}: pass --yes to purge without "
            "asking (or --dry-run to see what would go)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        answer = await asyncio.to_thread(input, f"{question} [y/N] ")
    except EOFError:  # Ctrl-D: no answer is no
        answer = ""
    if answer.strip().lower() in ("y", "yes"):
        return None
    print("purge: cancelled")
    return EXIT_NOT_FOUND


async def _purge_undecodable(
    q: queue.DeadLetterQueue, settings: settings_mod.Settings, args: argparse.Namespace
) -> int:
    async with store.opened(
        settings.database_url.get_secret_value(), pooler=settings.database_pooler
    ) as db:
        preview = await actions.purge_undecodable(q, db, actor=actor(), dry_run=True)
        if not preview.outcomes:
            print(f"purge: every letter in {q.name} decodes; nothing to do")
            return 0
        [found] = preview.outcomes
        if args.dry_run:
            _print_report(preview, args)
            return 0
        if not args.yes:
            question = f"purge {found.key} ({found.detail}) for good, unread?"
            if (declined := await _confirm(question)) is not None:
                return declined
        report = await actions.purge_undecodable(q, db, actor=actor())
    _print_report(report, args)
    return 0


async def run(settings: settings_mod.Settings, args: argparse.Namespace) -> int:
    # Everything printed is valid UTF-8 (deadletters.letters replaces what is not); on a
    # terminal whose encoding is not UTF-8, characters it lacks become "?" (bgworker.cli.main sets
    # errors="replace" on the standard streams for every command).
    # aiormq logs its reader's traceback when a frame cannot be decoded (or the broker
    # goes away); the same error reaches us and is reported in one plain line.
    logging.getLogger("aiormq.connection").setLevel(logging.ERROR)
    try:
        async with queue.DeadLetterQueue(
            settings.amqp_url.get_secret_value(), settings.namespace, settings.queue_type
        ) as q:
            if args.dlq_command == "list":
                return await _list(q, args)
            if args.dlq_command == "show":
                return await _show(q, settings, args)
            if args.dlq_command == "stats":
                return await _stats(q, args)
            if args.dlq_command == "migrate":
                moved = await q.migrate_classic()
                print(f"moved {moved} letter(s) from {q.topology.classic_dead_queue} to {q.name}")
                return 0
            return await _act(q, settings, args)
    except queue.UndecodableLetterError as exc:
        print(f"bgworker dlq {args.dlq_command}: {exc}", file=sys.stderr)
        return EXIT_NOT_FOUND
    except queue.DlqError as exc:
        print(f"bgworker dlq {args.dlq_command}: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
