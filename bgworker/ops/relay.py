"""``bgworker relay``: publishes the producer outbox (``store.producer_outbox``).

A producer that shares PostgreSQL with bgworker (or has its own, with the table made by
``bgworker relay --create-table``) writes its ``FileRequested`` into
``bgworker_producer_outbox`` in the same transaction as its own change
(``bgworker.producing.outbox``). The relay polls for committed rows, publishes each with
publisher confirms, and marks them in the transaction that locked them. So:

- a transaction that rolls back publishes nothing (its row never existed);
- a transaction that commits is published even if the producer dies the instant after,
  because the row is in PostgreSQL and the relay, not the producer, publishes it;
- a relay that dies between the broker's confirm and its own commit publishes those rows
  again: a duplicate ``FileRequested``, which a worker acknowledges by id without building
  anything twice. Published once as far as anyone downstream can tell.

Several relays may run at once (``SKIP LOCKED``). Published rows are pruned by ``bgworker
clean`` after ``BGWORKER_RETENTION__OUTBOX_DAYS``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import uuid
from typing import Any, Final

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.messaging import publisher

log = logging.getLogger(__name__)

BATCH: Final = 100
# How often an idle relay looks for committed events: the latency of publish-on-commit.
POLL_SECONDS: Final = 0.5


class Relay:
    def __init__(self, db: store.Store, pub: publisher.Publisher, *, batch: int = BATCH) -> None:
        self.db = db
        self.pub = pub
        self.batch = batch
        self.published = 0

    async def _publish(self, request_id: uuid.UUID, event: dict[str, Any]) -> None:
        # Published as recorded: the worker validates it as any producer's event (an invalid
        # one is dead-lettered with its reason, never lost here).
        await self.pub.publish_recorded(event, request_id)
        log.debug("relay: request %s published", request_id)

    async def once(self) -> int:
        """Publish every committed event, batch after batch; how many."""
        total = 0
        while n := await self.db.producer_outbox.relay_batch(self.batch, self._publish):
            total += n
        self.published += total
        return total

    async def run(self, stopping: asyncio.Event, poll_seconds: float = POLL_SECONDS) -> None:
        while not stopping.is_set():
            await self.once()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), poll_seconds)


async def run(settings: settings_mod.Settings, args: argparse.Namespace) -> int:
    """``bgworker relay [--database-url URL] [--create-table] [--once]``."""
    dsn = args.database_url or settings.database_url.get_secret_value()
    async with (
        store.opened(dsn) as db,
        publisher.Publisher(
            settings.amqp_url.get_secret_value(),
            namespace=settings.namespace,
            queue_type=settings.queue_type,
        ) as pub,
    ):
        if args.create_table:
            await db.producer_outbox.create_table()
        relay = Relay(db, pub)
        if args.once:
            print(f"relay: {await relay.once()} event(s) published")
            return 0
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (2, 15):  # SIGINT, SIGTERM: finish the batch in hand, then stop
            loop.add_signal_handler(signum, stopping.set)
        log.info("relay: publishing %s's producer outbox", settings.namespace)
        await relay.run(stopping)
        log.info("relay: stopped after %d event(s)", relay.published)
    return 0
