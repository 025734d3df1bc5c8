"""Requests nobody is looking after: the lease reaper (their worker died) and the sweep for
waiting requests whose message went missing (queries in ``recovery.sql``).

Invariant: PostgreSQL is the source of truth for every unfinished request. Each republish
is confirmed inside the transaction that records it, so a crash in between leaves the row
eligible again (a duplicate message at worst, which claiming makes harmless).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final

from bgworker.store import outbox, queries, rows

Q: Final = queries.QUERIES


class Recovery(outbox.WritesEffects):
    async def reap_expired_leases(
        self,
        limit: int,
        requeue: Callable[[dict[str, Any]], Awaitable[None]],
        dead_letter: Callable[[rows.RequestRow], Awaitable[None]],
        effects: rows.Effects,
    ) -> rows.ReapReport:
        """Requests whose worker died (lease expired): requeued, or failed once they have
        used all their attempts that way (a handler that kills its process every time)."""
        report = rows.ReapReport()
        claimed: list[rows.OutboxItem] = []
        async with self.transaction() as conn:
            for row in await conn.fetch(Q["expired_leases"], limit):
                rid, attempts = row["id"], row["attempts"]
                owner = row["lease_owner"] or "?"
                await conn.execute(Q["lose_attempt"], rid, attempts, owner)
                if row["cancel_requested"]:
                    await conn.execute(Q["mark_cancelled"], rid)
                    report.cancelled += 1
                elif attempts >= (row["max_attempts"] or 1):
                    error = (
                        f"attempt {attempts} of {row['max_attempts']}: worker {owner} "
                        "stopped while running it (lease expired)"
                    )
                    failed = rows.RequestRow.from_record(
                        await conn.fetchrow(Q["fail_expired"], rid, error)
                    )
                    claimed += await self.outbox.insert_effects(conn, rid, effects(failed))
                    await dead_letter(failed)
                    report.failed.append(rid)
                else:
                    # Publish before the update commits: a crash in between leaves the row
                    # running-and-expired, so the next reaper publishes again (a duplicate
                    # message, which claiming makes harmless) rather than never.
                    await requeue(row["event"])
                    await conn.execute(Q["requeue_expired"], rid)
                    report.requeued += 1
        self.outbox.announce(claimed)
        return report

    async def recover_stalled(
        self,
        grace_seconds: float,
        limit: int,
        republish: Callable[[dict[str, Any]], Awaitable[None]],
        retry_grace_seconds: float | None = None,
    ) -> rows.RecoveryReport:
        """Republish waiting requests whose message has gone missing (see the query), and end
        waiting requests with a pending cancel. Each republish is confirmed inside the
        transaction that records it, so a crash leaves the row eligible again.
        ``retry_grace_seconds``: for retrying rows, when not ``grace_seconds``."""
        report = rows.RecoveryReport()
        async with self.transaction() as conn:
            report.cancelled = len(await conn.fetch(Q["cancel_waiting"]))
            retry_grace = grace_seconds if retry_grace_seconds is None else retry_grace_seconds
            stalled = await conn.fetch(Q["stalled_requests"], grace_seconds, limit, retry_grace)
            for row in stalled:
                await republish(row["event"])
                await conn.execute(Q["mark_recovered"], row["id"])
                report.republished.append(row["id"])
        return report
