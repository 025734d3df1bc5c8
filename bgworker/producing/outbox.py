"""Publishing on commit, for producers: the event goes out only if the producer's
transaction commits, and then once.

Two ways (docs/producing.md, "Publishing on commit"):

- ``enqueue`` / ``enqueue_async`` / ``django_enqueue``: insert the ``FileRequested`` into
  ``bgworker_producer_outbox`` in the producer's own transaction; ``bgworker relay``
  publishes committed rows (``ops.relay``). Survives a producer that dies right after its
  commit. Needs the table in the database the producer's transaction runs on: bgworker's
  own (migration 0014), or the producer's (``bgworker relay --database-url ...
  --create-table``).
- ``django_on_commit``: Django's ``transaction.on_commit`` publishes after the commit, in
  the process that committed. No table, no relay; but an event whose process dies between
  commit and publish is lost (at most once), as with Celery's ``delay_on_commit``.
"""

from __future__ import annotations

from typing import Any, Protocol

import asyncpg

from bgworker.contract import events
from bgworker.messaging import publisher
from bgworker.store import producer_outbox


class Cursor(Protocol):
    """A DB-API cursor with ``%s`` placeholders (psycopg 3, psycopg2, Django's)."""

    def execute(self, query: str, params: Any = ..., /) -> Any: ...


def enqueue(cursor: Cursor, event: events.FileRequested) -> None:
    """Record ``event`` for the relay on the producer's open transaction (a DB-API cursor).
    Enqueuing one id twice records it once."""
    cursor.execute(producer_outbox.DBAPI_INSERT, (str(event.id), event.model_dump_json()))


async def enqueue_async(conn: asyncpg.Connection, event: events.FileRequested) -> None:
    """``enqueue`` on an asyncpg connection, inside ``async with conn.transaction()``."""
    await producer_outbox.enqueue(conn, event.id, event.model_dump_json())


def django_enqueue(event: events.FileRequested, using: str = "default") -> None:
    """``enqueue`` on a Django database connection, inside the current ``atomic`` block
    (the database must be PostgreSQL and hold the table)."""
    from django.db import connections

    with connections[using].cursor() as cursor:
        enqueue(cursor, event)


def django_on_commit(
    event: events.FileRequested, pub: publisher.SyncPublisher, using: str | None = None
) -> None:
    """Publish ``event`` once the current Django transaction commits; nothing if it rolls
    back (see the module doc for what a crash after the commit costs)."""
    from django.db import transaction

    transaction.on_commit(lambda: pub.publish(event), using=using)
