"""The trace context of a request's job, for the server's download span (``traces.sql``)."""

from __future__ import annotations

import uuid
from typing import Final

from bgworker.store import connection, queries

Q: Final = queries.QUERIES


class Traces(connection.Connected):
    async def trace_carrier(self, request_id: uuid.UUID) -> dict[str, str]:
        """The W3C trace headers the job stored with its effects; empty when untraced."""
        found = await self.pool.fetchval(Q["trace_carrier"], request_id)
        if not isinstance(found, dict):
            return {}
        return {str(k): str(v) for k, v in found.items()}
