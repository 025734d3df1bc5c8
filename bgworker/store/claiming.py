"""The uncapped claim (``record_and_claim``) of deliveries that arrive together, in one
pipelined round trip and one commit.

A worker's consumers are sent several deliveries at once (their prefetch, see
``worker.intake``); each delivery's job calls the claim, and the calls that meet while a
claim is on its way share the next one (``grouping``): one execution per call, pipelined,
in one implicit transaction. Each row still gets its own lease token and attempt row, as
a lone claim would; each caller gets only its own claim back.
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass
from typing import Any, Final

import asyncpg

from bgworker.store import connection, grouping, queries, rows

Q: Final = queries.QUERIES


@dataclass(frozen=True)
class _Call:
    """One call waiting for its group's statement: its bound values."""

    request_id: uuid.UUID
    args: tuple[Any, ...]


# A claim's result, or the error its own statement raised (the group's others unaffected).
_Claimed = rows.Claim | None | Exception


class Claims(connection.Connected):
    async def claim(self, request_id: uuid.UUID, args: tuple[Any, ...]) -> rows.Claim | None:
        """``args``: record_and_claim's values, for ``request_id``."""
        got = await self.group.submit(_Call(request_id, args))
        if isinstance(got, Exception):
            raise got
        return got

    @functools.cached_property
    def group(self) -> grouping.GroupCommit[_Call, _Claimed]:
        return grouping.GroupCommit(self._claim_many)

    async def _claim_many(self, calls: list[_Call]) -> list[_Claimed]:
        """A second delivery of an id already in the group runs after it, alone: results
        come back by id, and only one of them may have claimed. A statement refused (a
        value PostgreSQL cannot store) fails the whole group: then each call runs alone, so
        the error is only its own caller's."""
        sql = Q["record_and_claim"]
        results: list[_Claimed] = [None] * len(calls)
        first: dict[uuid.UUID, int] = {}
        alone: list[int] = []
        for i, call in enumerate(calls):
            if call.request_id in first:
                alone.append(i)
            else:
                first[call.request_id] = i
        # Sorted: rows locked in one order whichever calls met in the statement.
        grouped = sorted(first.values(), key=lambda i: calls[i].request_id)
        if len(grouped) == 1:
            alone = grouped + alone
        else:
            try:
                async with self.pool.acquire() as conn:
                    records = await conn.fetchmany(sql, [calls[i].args for i in grouped])
            except asyncpg.PostgresError:
                alone = grouped + alone
            else:
                claimed = {r["id"]: rows.Claim.with_row(r) for r in records}
                for i in grouped:
                    results[i] = claimed.get(calls[i].request_id)
        for i in sorted(alone):
            try:
                record = await self.pool.fetchrow(sql, *calls[i].args)
            except Exception as exc:  # its caller's alone (a lost connection: each raises it)
                results[i] = exc
            else:
                results[i] = None if record is None else rows.Claim.with_row(record)
        return results
