"""What a requester is told: plain texts that never carry exception text.

An exception's message may hold anything a handler or a library put in it (SQL, paths,
another customer's data), so the texts a requester sees (the JSON status, the failure
email, ``FileFailed.message``) come from this table, keyed by the failure reason. The row,
the attempt log and the dead letter keep the exception text for operators.
"""

from __future__ import annotations

from typing import Final

from bgworker.contract import states

_INVALID: Final = "the request was not valid, so the file could not be made"
_BROKEN: Final = "the file could not be made"

_BY_REASON: Final[dict[str, str]] = {
    states.Reason.MALFORMED_JSON: _INVALID,
    states.Reason.INVALID_SCHEMA: _INVALID,
    states.Reason.UNSUPPORTED_SCHEMA_VERSION: _INVALID,
    states.Reason.UNKNOWN_FILE_TYPE: "this kind of file cannot be made here",
    states.Reason.UNSTORABLE: _INVALID,
    states.Reason.CONFLICTING_DUPLICATE: _INVALID,
    states.Reason.PERMANENT_ERROR: "the file could not be made from what was asked for",
    states.Reason.MAX_ATTEMPTS: "the file could not be made, even after several attempts",
    states.Reason.WORKER_LOST: "the file could not be made, even after several attempts",
}


def failure(reason: str | None) -> str:
    """The requester's text for a request that failed with ``reason`` (any reason, known
    or not, gets a safe text)."""
    return _BY_REASON.get(reason or "", _BROKEN)
