"""The requester's "my files" page (``my_files.sql``): the live requests of one address,
one of them if it is that address's, and the email that carries the page's link. Resend
and cancel are ``Links.resend_email`` and ``Requests.request_cancel`` given the address."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from bgworker.contract import states
from bgworker.store import connection, queries, rows

Q: Final = queries.QUERIES


@dataclass(frozen=True)
class Owned:
    """A request of the page's address, and when its email was last sent (None: never)."""

    id: uuid.UUID
    status: states.Status
    cancel_requested: bool
    mailed_at: datetime | None


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
