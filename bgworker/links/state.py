"""What a link leads to, decided once: the JSON answers of ``/download`` and ``/status``, the
requester's pages and ``bgworker status`` all read it from here.

The token's part (invalid, someone else's, expired, revoked) is the server's to decide
(``web.downloads.link_state``); the request's part is :func:`of_row`, from the row alone.
Where the row says ready, the server then asks the storage whether the bytes are still
there (gone if not); ``bgworker status`` does not.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Final

from bgworker import store
from bgworker.contract import requester_texts, states


class LinkState(StrEnum):
    """What a link leads to, in the words a page for the requester would use."""

    INVALID = "invalid"  # not a token we signed, or not in its canonical form
    NOT_YOURS = "not_yours"  # a requester-bound link, someone else (or nobody) calling
    LINK_EXPIRED = "link_expired"  # older than MAX_AGE_SECONDS
    REVOKED = "revoked"  # issued before `bgworker revoke`
    STATUS_ONLY = "status_only"  # a status link used to download
    WAITING = "waiting"  # queued, parked (fair share), or not seen by any worker yet
    RUNNING = "running"  # running, or waiting for a retry
    READY = "ready"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"  # the file's own lifetime is over
    GONE = "gone"  # ready, but the bytes are no longer stored


# HTTP status of /download for each state (READY: 200 with the file).
DOWNLOAD_STATUS: Final[dict[LinkState, int]] = {
    LinkState.INVALID: 400,
    LinkState.NOT_YOURS: 403,
    LinkState.STATUS_ONLY: 403,
    LinkState.LINK_EXPIRED: 410,
    LinkState.REVOKED: 410,
    LinkState.WAITING: 409,
    LinkState.RUNNING: 409,
    LinkState.READY: 200,
    LinkState.FAILED: 410,
    LinkState.CANCELLED: 410,
    LinkState.EXPIRED: 410,
    LinkState.GONE: 410,
}
# The states in which /status refuses (the link itself grants nothing); others answer 200.
STATUS_REFUSALS: Final = frozenset(
    {LinkState.INVALID, LinkState.NOT_YOURS, LinkState.LINK_EXPIRED, LinkState.REVOKED}
)


def of_row(row: store.RequestRow, now: datetime | None = None) -> LinkState:
    """The state of a valid link to ``row``'s request, by the row alone (``READY``: the
    row says so; whether the bytes are still stored is the caller's to ask)."""
    if row.status in (states.Status.QUEUED, states.Status.PARKED):
        return LinkState.WAITING
    if row.status in states.IN_PROGRESS:
        return LinkState.RUNNING
    if row.status == states.Status.FAILED:
        return LinkState.FAILED
    if row.status == states.Status.CANCELLED:
        return LinkState.CANCELLED
    if row.status == states.Status.EXPIRED or (
        row.expires_at is not None and row.expires_at <= (now or datetime.now(UTC))
    ):
        return LinkState.EXPIRED
    if row.status != states.Status.READY or row.storage_key is None:
        return LinkState.GONE
    return LinkState.READY


def message(state: LinkState, row: store.RequestRow) -> str:
    if row.status == states.Status.PARKED:
        # Over its tenant's cap: the requester's other requests go first (fair share).
        return "the file is not ready yet: waiting for your earlier requests (status: parked)"
    if state in {LinkState.WAITING, LinkState.RUNNING}:
        return f"the file is not ready yet (status: {row.status})"
    if state == LinkState.FAILED:
        reason = requester_texts.failure(row.failure_reason)
        return f"the file is not available (status: failed): {reason}"
    if state == LinkState.CANCELLED:
        return "the file is not available (status: cancelled)"
    if state == LinkState.EXPIRED:
        return "the file has expired"
    if state == LinkState.GONE:
        return "the file is no longer stored"
    return "the file is ready"
