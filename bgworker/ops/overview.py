"""A request as an operator sees it at a terminal: ``bgworker status`` (a summary, or the JSON
object scripts read) and following a request until it ends (``status --watch``,
``publish --wait``).

Everything comes from the request's row, its attempt log and its outbox effects. A request
no worker has recorded has no row: producers publish without writing to the database.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TextIO

from bgworker import languages, store
from bgworker import settings as settings_mod
from bgworker.contract import states
from bgworker.links import state as link_states
from bgworker.ops import bundle_status
from bgworker.store import rows

# The row's progress is saved about once a second (bgworker.contract.progress): polling twice as
# often shows every saved value.
POLL_SECONDS: Final = 0.5
TERMINAL: Final = frozenset(states.Status) - states.IN_PROGRESS
# A followed request that ends otherwise (failed, cancelled) makes the command exit 1.
SUCCEEDED: Final = frozenset({states.Status.READY, states.Status.EXPIRED})
EXIT_UNSUCCESSFUL: Final = 1
EXIT_NOT_RECORDED: Final = 3  # `status` of an id in no row (yet); docs/reference.md "Exit codes"
NOT_RECORDED: Final = "not recorded yet: no worker has taken it; it may be waiting in the queue"


async def run(settings: settings_mod.Settings, args: argparse.Namespace) -> int:
    """``bgworker status ID [--json] [--watch]``."""
    if args.watch:
        return await wait(settings, args.id, as_json=args.json)
    async with store.opened(
        settings.database_url.get_secret_value(), pooler=settings.database_pooler
    ) as db:
        snap = await read(db, args.id)
        if snap is None and await bundle_status.show(db, args.id, as_json=args.json):
            return 0  # a bundle's id
    if snap is None:
        # Producers publish without writing to the database: a request exists here only
        # once a worker has taken (or rejected) its message.
        print(f"bgworker status: {args.id}: {NOT_RECORDED} (or the id is wrong)", file=sys.stderr)
        return EXIT_NOT_RECORDED
    now = datetime.now(UTC)
    if args.json:
        print(json.dumps(to_json(snap, now), indent=2))
    else:
        print("\n".join(summary(snap, now)))
    return 0


async def wait(
    settings: settings_mod.Settings, request_id: uuid.UUID, *, as_json: bool = False
) -> int:
    """Follow a request until it ends (``status --watch``, ``publish --wait``) on standard
    output, then show its summary; 0 when it is ready, 1 when it failed or was cancelled."""
    async with store.opened(
        settings.database_url.get_secret_value(), pooler=settings.database_pooler
    ) as db:
        with display(sys.stdout, as_json=as_json) as show:
            snap = await follow(db, request_id, show)
    if not as_json:
        print("\n".join(summary(snap, datetime.now(UTC))))
    return 0 if snap.row.status in SUCCEEDED else EXIT_UNSUCCESSFUL


Snapshot = rows.Overview  # what the store reads of a request, all at once


async def read(db: store.Store, request_id: uuid.UUID) -> Snapshot | None:
    """The request now; None when no worker has recorded it."""
    return await db.listing.overview(request_id)


def link_state(row: store.RequestRow, now: datetime) -> link_states.LinkState:
    """What a link to the request leads to, in the words of ``GET /status`` (``state``),
    without asking the storage whether the bytes are still there."""
    return link_states.of_row(row, now)


# -- the JSON object (docs/operating.md "Command line": `bgworker status --json`) ---------


def to_json(snap: Snapshot, now: datetime) -> dict[str, Any]:
    """The documented object: a stable set of keys, not the table's columns."""
    row = snap.row
    requester = row.event.get("requester")
    return {
        "id": str(row.id),
        "status": str(row.status),
        "file_type": row.file_type,
        "filename": row.filename,
        "content_type": row.content_type,
        "size": row.size_bytes,  # as GET /status names it
        "sha256": row.sha256,
        "progress": row.progress,
        "percent": row.percent,
        "progress_done": row.progress_done,
        "progress_total": row.progress_total,
        "attempts": row.attempts,
        "max_attempts": row.max_attempts,
        "cancel_requested": row.cancel_requested,
        "reused_from": str(row.reused_from) if row.reused_from else None,
        "link": {"state": link_state(row, now), "generation": snap.generation},
        "requester": requester if isinstance(requester, dict) else None,
        "requested_at": _iso(row.requested_at),
        "received_at": _iso(row.received_at),
        "started_at": _iso(row.started_at),
        "finished_at": _iso(row.finished_at),
        "notified_at": _iso(row.notified_at),
        "expires_at": _iso(row.expires_at),
        "next_run_at": _iso(row.next_run_at),
        "worker": row.lease_owner if row.status == states.Status.RUNNING else None,
        "failure_reason": row.failure_reason,
        "last_error_class": row.last_error_class,
        "last_error": row.last_error,
        "attempt_log": [_plain(a) for a in snap.attempts],
        "effects": [_plain(e) for e in snap.effects],
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _plain(record: dict[str, Any]) -> dict[str, Any]:
    """A database record as JSON values: timestamps ISO 8601, ids as text."""
    out = {}
    for key, value in record.items():
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, uuid.UUID):
            value = str(value)
        out[key] = value
    return out


# -- the summary for people ------------------------------------------------------------


def summary(snap: Snapshot, now: datetime) -> list[str]:
    """A few labelled lines: what an operator asks first, no internal columns."""
    row = snap.row
    lines = [
        ("request", f"{row.id} ({row.file_type})"),
        ("state", _state(snap, now)),
        ("file", _file(row)),
        ("progress", progress_text(row) or "-"),
        ("attempts", _attempts(row)),
        ("link", _link(snap, now)),
        ("requester", _requester(row)),
    ]
    for label, value in (
        ("requested", row.requested_at),
        ("started", row.started_at),
        ("finished", row.finished_at),
        ("notified", row.notified_at),
        ("expires", row.expires_at),
    ):
        lines.append((label, _when(value, now)))
    if row.last_error or row.last_error_class:
        reason = f" [{row.failure_reason}]" if row.failure_reason else ""
        error = f"{row.last_error_class or 'error'}: {_one_line(row.last_error)}{reason}"
        lines.append(("error", error))
    lines.extend(("", line) for line in _attempt_lines(snap.attempts))
    if snap.effects:
        lines.append(("effects", "; ".join(_effect(e) for e in snap.effects)))
    width = max(len(label) for label, _ in lines) + 2
    return [f"{label:<{width}}{value}".rstrip() for label, value in lines]


def _state(snap: Snapshot, now: datetime) -> str:
    row = snap.row
    text = str(row.status)
    if row.cancel_requested and row.status in states.IN_PROGRESS:
        text += " (cancel requested)"
    if row.status == states.Status.RETRYING and row.next_run_at:
        text += f", next attempt {_relative(row.next_run_at, now)}"
    if row.reused_from is not None:
        text += f", the file of {row.reused_from} (identical request)"
    return text


def _file(row: store.RequestRow) -> str:
    size = row.size_bytes
    shown = "-" if size is None else f"{languages.format_size(size, 'en')} ({size:,} bytes)"
    return f"{row.filename}, {row.content_type}, {shown}"


def progress_text(row: store.RequestRow) -> str:
    """``45.0% (450 of 1000)``; empty when the handler reported nothing."""
    parts = []
    if row.percent is not None:
        parts.append(f"{row.percent:.1f}%")
    if row.progress_done is not None:
        counts = f"{row.progress_done}" + (
            f" of {row.progress_total}" if row.progress_total is not None else ""
        )
        parts.append(f"({counts})" if parts else counts)
    return " ".join(parts)


def _attempts(row: store.RequestRow) -> str:
    return f"{row.attempts}" + (f" of {row.max_attempts}" if row.max_attempts else "")


def _attempt_lines(attempts: list[dict[str, Any]]) -> list[str]:
    # Only attempts that left something to read: an error, or a lost worker.
    out = []
    for a in attempts:
        if a.get("error") or a.get("outcome") == states.AttemptOutcome.LOST:
            error = f"{a.get('error_class') or ''}: {_one_line(a.get('error'))}".strip(": ")
            out.append(f"attempt {a['attempt']} {a.get('outcome') or 'running'}: {error}")
    return out


def _link(snap: Snapshot, now: datetime) -> str:
    state = link_state(snap.row, now)
    words = {
        "waiting": "not ready yet (a link opens the status page)",
        "running": "not ready yet (a link opens the status page)",
        "ready": "downloadable",
        "expired": "expired: the file's lifetime is over",
    }.get(state, f"no file ({state})")
    revoked = (
        f"revoked {snap.generation} time(s): older links are refused"
        if snap.generation
        else "never revoked"
    )
    return f"{words}; {revoked}; `bgworker link ID` prints one"


def _requester(row: store.RequestRow) -> str:
    requester = row.event.get("requester")
    if not isinstance(requester, dict):
        return "-"
    who = row.requester_email or "(no email)"
    if row.requester_id:
        who += f", id {row.requester_id}"
    return f"{who}, {requester.get('language', 'en')}, {requester.get('timezone', 'UTC')}"


def _effect(effect: dict[str, Any]) -> str:
    text = f"{effect['kind']} {effect['status']}"
    if effect.get("last_error"):
        text += f" ({_one_line(effect['last_error'])})"
    return text


def _one_line(text: object, width: int = 200) -> str:
    """An error on one line and at most ``width`` characters (``--json`` has it whole)."""
    flat = " ".join(str(text or "").split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _when(value: datetime | None, now: datetime) -> str:
    if value is None:
        return "-"
    return f"{value.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC ({_relative(value, now)})"


def _relative(value: datetime, now: datetime) -> str:
    delta = value - now
    seconds = abs(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            amount = f"{seconds / size:.0f} {unit}"
            break
    else:
        amount = f"{seconds:.0f} s"
    return f"in {amount}" if delta > timedelta(0) else f"{amount} ago"


# -- following a request until it ends -------------------------------------------------


def _doing(row: store.RequestRow) -> str:
    text = str(row.status)
    if row.status in states.IN_PROGRESS and row.attempts:
        text += f", attempt {_attempts(row)}"
    return text


def line(snap: Snapshot | None) -> str:
    """One line of a followed request: its state and how far it is."""
    if snap is None:
        return NOT_RECORDED
    progress = progress_text(snap.row)
    return _doing(snap.row) + (f", {progress}" if progress else "")


def _key(snap: Snapshot | None) -> tuple[object, ...]:
    # What makes a new plain line: the state, the attempt, every tenth of the way.
    if snap is None:
        return ()
    fraction = snap.row.progress
    return (snap.row.status, snap.row.attempts, None if fraction is None else int(fraction * 10))


Show = Callable[[Snapshot | None], None]


async def follow(db: store.Store, request_id: uuid.UUID, show: Show) -> Snapshot:
    """Read the request every POLL_SECONDS, ``show`` each reading, until it ends; the last
    reading. A request not recorded yet is waited for."""
    while True:
        snap = await read(db, request_id)
        show(snap)
        if snap is not None and snap.row.status in TERMINAL:
            return snap
        await asyncio.sleep(POLL_SECONDS)


def plain_lines(out: TextIO) -> Show:
    """A timestamped line whenever the state, the attempt or the tenth of progress changes:
    for logs and pipes."""
    last: list[tuple[object, ...] | None] = [None]

    def show(snap: Snapshot | None) -> None:
        key = _key(snap)
        if key != last[0]:
            last[0] = key
            print(f"{datetime.now(UTC):%H:%M:%S} {line(snap)}", file=out, flush=True)

    return show


def json_lines(out: TextIO) -> Show:
    """The JSON object again whenever it changes, one a line (``status --watch --json``)."""
    last: list[str | None] = [None]

    def show(snap: Snapshot | None) -> None:
        if snap is None:
            return  # nothing to describe until a worker records it
        text = json.dumps(to_json(snap, datetime.now(UTC)))
        if text != last[0]:
            last[0] = text
            print(text, file=out, flush=True)

    return show


@contextlib.contextmanager
def display(out: TextIO, *, as_json: bool = False) -> Iterator[Show]:
    """How a followed request is shown: JSON lines for scripts, a live bar on a terminal,
    plain lines otherwise."""
    if as_json:
        yield json_lines(out)
    elif out.isatty():
        with progress_bar(out) as show:
            yield show
    else:
        yield plain_lines(out)


@contextlib.contextmanager
def progress_bar(out: TextIO) -> Iterator[Show]:
    """A live bar (rich): the state, the handler's progress and the time it has taken.
    Redrawn from the polling loop only, no thread of its own: an error writing the
    terminal reaches the command, not a thread's traceback."""
    from rich import console, progress

    bar = progress.Progress(
        progress.SpinnerColumn(),
        progress.TextColumn("{task.description}", markup=False),
        progress.BarColumn(),
        progress.TaskProgressColumn(),
        progress.TimeElapsedColumn(),
        console=console.Console(file=out),
        auto_refresh=False,
        redirect_stdout=False,
        redirect_stderr=False,
    )
    with bar:
        task = bar.add_task("queued (not recorded yet)", total=None)

        def show(snap: Snapshot | None) -> None:
            if snap is not None:
                row = snap.row
                done = 1.0 if row.status == states.Status.READY else row.progress
                if done is None:  # nothing reported: the bar pulses
                    bar.update(task, description=_doing(row))
                else:
                    bar.update(task, description=_doing(row), total=1.0, completed=done)
            bar.refresh()

        yield show
