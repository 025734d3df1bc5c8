"""What the CLI writes: standard output that notices a closed pipe, and one-line errors.

``bgworker dlq list | head -1`` closes the pipe after one line; every command writes through
``guard_stdout``'s stream, so the command ends quietly with the shell's SIGPIPE status instead
of a traceback (``tests/unit/test_cli_output*``).
"""

from __future__ import annotations

import io
import os
import sys
from typing import Final

EXIT_CLOSED_PIPE: Final = 141  # 128 + SIGPIPE: what a shell shows for `yes | head -1`


class OutputClosedError(Exception):
    """Whoever read our standard output went away (``bgworker dlq list | head -1``).

    Not an OSError on purpose: a BrokenPipeError is also what a socket to a vanished
    service raises, and every handler that rides out (or reports) a lost connection would
    take it for one."""


class _Stdout(io.TextIOWrapper):
    """Standard output that raises OutputClosedError when the pipe's reader is gone."""

    def write(self, text: str) -> int:
        try:
            return super().write(text)
        except BrokenPipeError as exc:
            raise OutputClosedError from exc

    def flush(self) -> None:
        try:
            super().flush()
        except BrokenPipeError as exc:
            raise OutputClosedError from exc


def guard_stdout() -> None:
    """Put _Stdout in place of sys.stdout (the same descriptor and encoding). Characters the
    terminal's encoding lacks become "?" rather than an error (what `dlq` did for itself)."""
    stream = sys.stdout
    if stream is not sys.__stdout__ or not isinstance(stream, io.TextIOWrapper):
        return  # replaced by a test harness (or done already), or no stdout at all
    encoding, line_buffering = stream.encoding, stream.line_buffering
    sys.stdout = _Stdout(
        stream.detach(), encoding=encoding, errors="replace", line_buffering=line_buffering
    )
    if isinstance(sys.stderr, io.TextIOWrapper):
        sys.stderr.reconfigure(errors="replace")


def output_closed() -> int:
    # Quietly, like other Unix tools; what is still buffered goes to /dev/null so that the
    # interpreter's last flush does not fail again.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_CLOSED_PIPE


def say(command: str, line: str) -> None:
    """One line on stderr, named after the command, like every error of this CLI."""
    try:
        print(f"bgworker {command}: {line}", file=sys.stderr)
    except BrokenPipeError:
        pass  # nobody reads stderr either: the exit status says it
