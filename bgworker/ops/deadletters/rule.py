"""The replay rule: what replaying one letter does, decided from its request row.

A letter is removed only when the request is runnable afterwards (its message is on the
work queue, confirmed) or has nothing left to run. Pure: the store locks the row and asks
(``store.dead_letters.DeadLetterRecords.requeue``), the dry run asks without a lock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from bgworker.contract import states
from bgworker.store import dead_letters


class Plan(enum.StrEnum):
    """What replay does with one letter."""

    REPLAY = "replay"  # failed or unrecorded: row back to queued, body republished
    REPUBLISH = "republish"  # queued/retrying: body republished, row left as it is
    FORCE = "force"  # cancelled, --force: cancel cleared, row queued, body republished
    DROP = "drop"  # stale letter: removed, nothing to run
    KEEP = "keep"  # letter kept, nothing done
    REFUSE = "refuse"  # cancelled, no --force: letter kept

    @property
    def publishes(self) -> bool:
        return self in (Plan.REPLAY, Plan.REPUBLISH, Plan.FORCE)


# How each plan changes the request row (the store applies it).
_ROW_CHANGE: Final[dict[Plan, dead_letters.RowChange]] = {
    Plan.REPLAY: dead_letters.RowChange.REQUEUE,
    Plan.FORCE: dead_letters.RowChange.FORCE,
    Plan.REPUBLISH: dead_letters.RowChange.REPUBLISH,
}


@dataclass(frozen=True)
class Decision:
    plan: Plan
    why: str

    @property
    def removes(self) -> bool:
        """The letter leaves the queue (after its republish, if any, is confirmed)."""
        return self.plan.publishes or self.plan is Plan.DROP

    @property
    def change(self) -> dead_letters.RowChange:
        """What the store does to the row (``store.dead_letters.Verdict``)."""
        return _ROW_CHANGE.get(self.plan, dead_letters.RowChange.NONE)


def decide(
    request_id: str,
    status: str | None,
    *,
    cancel_requested: bool = False,
    lease_live: bool = False,
    force: bool = False,
    placeholder: bool = False,
) -> Decision:
    """The replay rule for the request ``request_id`` in ``status`` (None: not recorded)."""
    if placeholder:
        # Cancelled before it arrived, or erased (`bgworker forget`), or its contents pruned:
        # not even --force may run it again (the letter may hold what was erased).
        return Decision(Plan.DROP, "request was erased or cancelled before it came: never run")
    if status in states.DONE:
        # Its file was built: never run twice. The letter is stale.
        return Decision(Plan.DROP, f"request is {status}: not run twice")
    if status == states.Status.CANCELLED or cancel_requested:
        if force:
            return Decision(Plan.FORCE, "forced: cancel cleared")
        return Decision(
            Plan.REFUSE,
            f"request {request_id} was cancelled; "
            "replay with --force to clear the cancel and run it",
        )
    if status is None or status == states.Status.FAILED:
        return Decision(Plan.REPLAY, f"status {status or 'unrecorded'}")
    if status in states.WAITING:
        # Its message may be gone (the quorum queue's delivery limit dead-lettered it, a
        # retry message was lost with a broker), so it is republished rather than trusted
        # to be there. A duplicate message is harmless: the claim runs the request once.
        return Decision(Plan.REPUBLISH, f"request is {status}: its message republished")
    if status == states.Status.RUNNING:
        if lease_live:
            return Decision(Plan.DROP, "request is running under a live lease")
        return Decision(
            Plan.KEEP,
            "request is running but its lease expired: a worker's reaper requeues it; "
            "replay again later",
        )
    return Decision(Plan.KEEP, f"request is {status}")


def decide_for(request_id: str, state: dead_letters.RequestState, *, force: bool) -> Decision:
    """``decide`` for a row as the store reads it."""
    return decide(
        request_id,
        state.status,
        cancel_requested=state.cancel_requested,
        lease_live=state.lease_live,
        force=force,
        placeholder=state.placeholder,
    )
