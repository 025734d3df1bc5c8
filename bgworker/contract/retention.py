"""The retention policy: how long each kind of data is kept after a request ends
(``BGWORKER_RETENTION__*``), the deployment's promise to the people whose requests it
keeps as the event contract is its promise to producers. ``bgworker clean`` carries it out
(``ops.retention``); docs/retention.md states and justifies each default.

A request ends when it is neither waiting nor running: it ended when it finished, or when
its file expired if that is later, so nothing is pruned while a file can still be
downloaded. Each period is in days (fractions allowed); 0 prunes at the first ``clean``.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

DAY = 86400.0


def _days(default: float) -> float:
    return Field(default, ge=0, le=36500, allow_inf_nan=False)


class RetentionSettings(BaseModel):
    # The event's criteria, description and file name, and the last error text.
    criteria_days: float = _days(30)
    # The requester's email address and id (on the row and in the event), of requests and
    # of bundles.
    addresses_days: float = _days(30)
    # Attempt history: one row per attempt, with its worker, times and error text.
    attempts_days: float = _days(30)
    # Effects performed or given up (email, event, webhook payloads), and the producer
    # outbox's published rows.
    outbox_days: float = _days(30)
    # Dead letters in ns.dead, and the records of their replays and purges.
    dead_letters_days: float = _days(14)
    # The request rows themselves (what is left of them); then bundle rows left without
    # parts, schedules' published periods and ended schedules.
    rows_days: float = _days(90)
    # Rows one pruning statement handles: each batch is one short transaction.
    batch_size: int = Field(500, ge=1, le=10000)

    def seconds(self, kind: str) -> float:
        """The period of ``kind`` (``criteria``, ``rows``...) in seconds."""
        days: float = getattr(self, f"{kind}_days")
        return days * DAY
