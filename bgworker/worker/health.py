"""A worker's view of its dependencies: the ``bgworker_dependency_up`` gauge and a dict."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Final

from aio_pika.abc import AbstractRobustConnection

from bgworker import store
from bgworker.observe import logs, metrics

INTERVAL_SECONDS: Final = 5.0
PING_TIMEOUT_SECONDS: Final = 2.0


@dataclass(frozen=True, kw_only=True)
class Health:
    db: store.Store
    connection: AbstractRobustConnection
    # Updated in place every round: {"database": bool, "broker": bool}.
    status: dict[str, bool] = field(default_factory=dict)

    async def run(self, stopping: asyncio.Event) -> None:
        """Keep ``status`` and the gauge true to the connections until ``stopping``."""
        while not stopping.is_set():
            try:
                async with asyncio.timeout(PING_TIMEOUT_SECONDS):
                    await self.db.maintenance.ping()
                database = True
            except Exception as exc:
                # An idle worker hears of a lost PostgreSQL here first: one WARNING, then
                # one INFO when a ping (or anything else) gets through again.
                logs.OUTAGES[logs.POSTGRESQL].lost(exc, "health check")
                database = False
            if database:
                logs.OUTAGES[logs.POSTGRESQL].back()
            self.status.update(database=database, broker=not self.connection.is_closed)
            for name, up in self.status.items():
                metrics.DEPENDENCY_UP.labels(name).set(1 if up else 0)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(INTERVAL_SECONDS):
                    await stopping.wait()
