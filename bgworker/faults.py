"""Whose fault an error is: the infrastructure's (wait and try again) or the message's (it
will fail the same way every time: dead-letter it now).

A worker holds a delivery and retries it in place only while RabbitMQ or PostgreSQL is away
or overloaded. Holding anything else would redeliver the same poison until the broker drops
it at its delivery limit (quorum queues) or forever (classic queues), while good requests
wait behind it. So the infrastructure list is short and explicit, and every other exception
raised while decoding, validating, recording or claiming a delivery belongs to the message.
"""

from __future__ import annotations

from typing import Final

import aiormq.exceptions
import asyncpg

from bgworker.messaging import broker

# SQLSTATE classes that say the server, not the statement, is the problem
# (https://www.postgresql.org/docs/current/errcodes-appendix.html):
#   08 connection exception, 28 invalid authorization, 3D invalid catalog name (database
#   gone), 40 transaction rollback (serialization failure, deadlock), 42 syntax error or
#   access rule violation (schema not migrated, a missing grant: a deployment problem, not
#   the event's), 53 insufficient resources, 57 operator intervention (shutdown, cancel),
#   58 system error, XX internal error.
INFRASTRUCTURE_SQLSTATE_CLASSES: Final = frozenset(
    {"08", "28", "3D", "40", "42", "53", "57", "58", "XX"}
)

_INFRASTRUCTURE_TYPES: Final = (
    OSError,  # refused, reset, unreachable (aiormq's connection errors are OSErrors too)
    TimeoutError,
    ConnectionError,
    asyncpg.InterfaceError,  # connection closed, pool closing, connection in use
    asyncpg.InternalClientError,  # raised when a connection dies mid-operation
    aiormq.exceptions.AMQPError,
    broker.PublishError,  # a publish the broker did not confirm
)


def is_infrastructure(exc: BaseException) -> bool:
    """True when ``exc`` says a service is away or overloaded, so the same delivery may
    succeed later; False when the delivery itself cannot be processed."""
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = getattr(exc, "sqlstate", None) or ""
        return sqlstate[:2] in INFRASTRUCTURE_SQLSTATE_CLASSES
    if isinstance(exc, _INFRASTRUCTURE_TYPES):
        return True
    # aio-pika's channel-state errors are RuntimeErrors; look at the module, not the text.
    return type(exc).__module__.startswith(("aiormq", "aio_pika", "pamqp"))
