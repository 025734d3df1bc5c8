"""Links: the per-request link generation (``bgworker revoke``) and re-arming a sent
email (``bgworker resend``); queries in ``links.sql``."""

from __future__ import annotations

import uuid
from typing import Final

from bgworker.store import connection, queries, rows

Q: Final = queries.QUERIES


class Links(connection.Connected):
    async def link_generation(self, request_id: uuid.UUID) -> int | None:
        """The generation a new link must carry; None for a request not recorded yet."""
        value: int | None = await self.pool.fetchval(Q["link_generation"], request_id)
        return value

    async def get_request_for_link(
        self, request_id: uuid.UUID
    ) -> tuple[rows.RequestRow, int] | None:
        record = await self.pool.fetchrow(Q["get_request_for_link"], request_id)
        if record is None:
            return None
        return rows.RequestRow.from_record(record), record["link_generation"]

    async def revoke_links(self, request_id: uuid.UUID) -> int | None:
        """Invalidate every link issued so far; the new generation, None if no such row."""
        value: int | None = await self.pool.fetchval(Q["revoke_links"], request_id)
        return value

    async def resend_email(
        self, request_id: uuid.UUID, *, email: str | None = None, interval: float | None = None
    ) -> str | None:
        """Re-arm the request's sent email; its kind, or None when there is none to send
        again (no email, not sent yet, or the request is neither ready nor failed). The
        "my files" page passes the requester's ``email`` (another address's request is
        never re-armed) and ``interval``: none if the email went less than that ago."""
        kind: str | None = await self.pool.fetchval(Q["resend_email"], request_id, email, interval)
        return kind
