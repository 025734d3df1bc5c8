"""The requester's "my files" page (``my_files.sql``): the live requests, bundles and
schedules of one address, one of them if it is that address's, and the email that carries
the page's link. Resend and cancel are ``Links.resend_email`` and ``Requests.request_cancel``
given the address; ending a schedule is ``Schedules.end``, as the unsubscribe link does,
once ``schedule_status`` found it the address's."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from bgworker.contract import states
from bgworker.store import bundles, connection, queries, rows, schedules

Q: Final = queries.QUERIES


@dataclass(frozen=True)
class Owned:
    """A request of the page's address, and when its email was last sent (None: never)."""

    id: uuid.UUID
    status: states.Status
    cancel_requested: bool
    mailed_at: datetime | None


@dataclass(frozen=True)
class LiveBundle:
    """A bundle of the page's address, with how many of its parts ended and are ready."""

    bundle: bundles.BundleRow
    done: int
    ready: int


class MyFiles(connection.Connected):
    async def list_files(
        self, email: str, *, recent_seconds: float, limit: int
    ) -> tuple[list[rows.RequestRow], list[int]]:
        """The address's live requests, newest first, and each one's link generation."""
        records = await self.pool.fetch(
            *queries.bind("my_files_list", email=email, recent=recent_seconds, limit=limit)
        )
        return (
            [rows.RequestRow.from_record(r) for r in records],
            [r["link_generation"] for r in records],
        )

    async def owned(self, request_id: uuid.UUID, email: str) -> Owned | None:
        """The request when it was made with ``email``; None for another's or an unknown id."""
        record = await self.pool.fetchrow(
            *queries.bind("my_files_own", request_id=request_id, email=email)
        )
        if record is None:
            return None
        return Owned(
            record["id"],
            states.Status(record["status"]),
            record["cancel_requested"],
            record["mailed_at"],
        )

    async def ask_link(self, email: str, *, interval: float) -> bool:
        """Queue the email with the page's link for ``email``: True when queued, False when
        the address has no request or had one within ``interval`` seconds."""
        found = await self.pool.fetchval(
            *queries.bind("my_files_ask", email=email, interval=interval)
        )
        return found is not None

    async def list_bundles(self, email: str, *, limit: int) -> list[LiveBundle]:
        """The address's bundles with a part in progress or ready and not expired, newest
        first."""
        records = await self.pool.fetch(*queries.bind("my_files_bundles", email=email, limit=limit))
        fields = bundles.BundleRow.__dataclass_fields__
        return [
            LiveBundle(bundles.BundleRow(**{f: r[f] for f in fields}), r["done"], r["ready"])
            for r in records
        ]

    async def list_schedules(self, email: str, *, limit: int) -> list[schedules.Schedule]:
        """The address's active and paused schedules, newest first."""
        records = await self.pool.fetch(
            *queries.bind("my_files_schedules", email=email, limit=limit)
        )
        return [schedules.Schedule.from_record(r) for r in records]

    async def schedule_status(self, schedule_id: uuid.UUID, email: str) -> str | None:
        """The schedule's status when its requester is ``email``; None for another's or an
        unknown id."""
        status: str | None = await self.pool.fetchval(
            *queries.bind("my_files_own_schedule", schedule_id=schedule_id, email=email)
        )
        return status
