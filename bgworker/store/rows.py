"""What the store's queries return: typed rows and reports, no database access."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

import asyncpg

from bgworker.contract import progress, states


@dataclass(frozen=True)
class RequestRow:
    id: uuid.UUID
    file_type: str
    status: states.Status
    event: dict[str, Any]
    filename: str
    content_type: str
    requester_id: str | None
    requester_email: str | None
    attempts: int
    max_attempts: int | None
    last_error_class: str | None
    last_error: str | None
    failure_reason: str | None
    progress: float | None
    progress_done: int | None
    progress_total: int | None
    size_bytes: int | None
    sha256: str | None
    storage_key: str | None
    requested_at: datetime
    received_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    notified_at: datetime | None
    expires_at: datetime | None
    next_run_at: datetime | None
    cancel_requested: bool
    lease_owner: str | None
    lease_token: uuid.UUID | None
    lease_expires_at: datetime | None
    updated_at: datetime
    # Dedupe by content (file types registered with dedupe_seconds): the fingerprint of a
    # request that built or reused a file, and the request whose bytes it reuses.
    fingerprint: str | None = None
    reused_from: uuid.UUID | None = None
    # Set once retention or erasure removed what the event said (migration 0014).
    scrubbed_at: datetime | None = None
    # A part of a bundle (migration 0016): its bundle, and its place in it.
    bundle_id: uuid.UUID | None = None
    bundle_index: int | None = None

    @property
    def body_kept(self) -> bool:
        """Whether ``event`` is still the body as published: not a cancel that came before
        the request (a placeholder, event ``{}``) nor a row whose content retention or
        erasure removed. Only a kept body can tell a conflicting duplicate from a plain one."""
        return bool(self.event) and self.scrubbed_at is None

    @property
    def percent(self) -> float | None:
        """The progress as a percentage with one decimal (65.0), for people."""
        return progress.percent(self.progress)

    @classmethod
    def from_record(cls, record: asyncpg.Record) -> RequestRow:
        # .get: a query that selects the columns of an older schema leaves the newer ones None.
        values = {name: record.get(name) for name in _request_fields()}
        # The column's CHECK constraint holds exactly these values (tests/.../test_states.py).
        values["status"] = states.Status(values["status"])
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, datetime):
                value = value.isoformat()
            elif isinstance(value, uuid.UUID):
                value = str(value)
            elif isinstance(value, states.Status):
                value = value.value
            out[f.name] = value
        return out


@dataclass(frozen=True)
class Overview:
    """A request as `bgworker status` shows it: its row, link generation (how many times its
    links were revoked), attempt log and outbox effects (``Listing.overview``)."""

    row: RequestRow
    generation: int
    attempts: list[dict[str, Any]]
    effects: list[dict[str, Any]]


# Builds the outbox rows (kind, payload) a state change causes, from the updated row.
Effects = Callable[[RequestRow], list[tuple[str, dict[str, Any]]]]


@functools.cache
def _request_fields() -> tuple[str, ...]:
    # Read once: ``dataclasses.fields`` builds its tuple anew on every call (one per row read).
    return tuple(f.name for f in fields(RequestRow))


@dataclass(frozen=True)
class Cancelled:
    """What a producer's cancel found (``Requests.cancel_or_placeholder``): the status
    afterwards, whether a running request now has a cancel pending, and whether the cancel
    came first (a placeholder was recorded). ``changed``: this call made the change."""

    status: states.Status
    cancel_requested: bool
    placeholder: bool = False
    changed: bool = False


@dataclass(frozen=True)
class Claim:
    request_id: uuid.UUID
    attempt: int
    lease_token: uuid.UUID
    max_attempts: int | None
    # The row as claimed, when the claim read it whole (record_and_claim, the job path):
    # the outcome's effects are then built before the statement that records it.
    row: RequestRow | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_record(cls, record: asyncpg.Record) -> Claim:
        return cls(record["id"], record["attempts"], record["lease_token"], record["max_attempts"])

    @classmethod
    def with_row(cls, record: asyncpg.Record) -> Claim:
        """A claim that came back with every column of its row."""
        row = RequestRow.from_record(record)
        return cls(row.id, row.attempts, record["lease_token"], row.max_attempts, row)


@dataclass(frozen=True)
class DirectClaim:
    """Fair share: a parked request claimed by a freed job slot, with no message: the claim
    and the stored event the slot runs."""

    claim: Claim
    event: dict[str, Any]


@dataclass(frozen=True)
class Parked:
    """A capped claim that found no free slot: the request waits in PostgreSQL (parked)."""

    request_id: uuid.UUID


@dataclass(frozen=True)
class OverQuota:
    """A request its tenant's quota has no room for: which quota, and in how many seconds
    the oldest request counted leaves its window."""

    quota: str  # per_hour, per_day
    limit: int
    used: int
    retry_after: float


@dataclass(frozen=True)
class TenantCounts:
    """One tenant's requests by where they stand (the console, ``bgworker status``)."""

    tenant: str
    in_flight: int
    parked: int
    queued: int


@dataclass
class ReapReport:
    requeued: int = 0
    cancelled: int = 0
    failed: list[uuid.UUID] = field(default_factory=list)


@dataclass
class RecoveryReport:
    republished: list[uuid.UUID] = field(default_factory=list)
    cancelled: int = 0


@dataclass(frozen=True)
class OutboxItem:
    request_id: uuid.UUID
    kind: states.EffectKind
    payload: dict[str, Any]
    attempts: int
    # The request's link generation, read with the row (None: not read; ask the store).
    link_generation: int | None = None

    @classmethod
    def from_record(cls, record: asyncpg.Record) -> OutboxItem:
        kind = states.EffectKind(record["kind"])
        return cls(
            record["request_id"],
            kind,
            record["payload"],
            record["attempts"],
            record.get("link_generation"),
        )


@dataclass(frozen=True)
class ExpiredFile:
    """A ready request just marked expired, and the file to delete (None: it had none)."""

    request_id: uuid.UUID
    storage_key: str | None
