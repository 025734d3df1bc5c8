"""Whose fault an error is: the infrastructure's (wait and try again) or the message's (it
will fail the same way every time: dead-letter it now).

A worker holds a delivery and retries it in place only while RabbitMQ or PostgreSQL is away
or overloaded. Holding anything else would redeliver the same poison until the broker drops
it at its delivery limit (quorum queues) or forever (classic queues), while good requests
wait behind it. So the infrastructure list is short and explicit, and every other exception
raised while decoding, validating, recording or claiming a delivery belongs to the message.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

import aiormq.exceptions
import asyncpg

from bgworker import storage
from bgworker.messaging import broker
from bgworker.observe import logs

log = logging.getLogger(__name__)
T = TypeVar("T")

# SQLSTATE classes that say the server, not the statement, is the problem
# (https://www.postgresql.org/docs/current/errcodes-appendix.html):
#   08 connection exception, 26 invalid SQL statement name (a prepared statement missing:
#   bgworker names none itself, so a pooler in transaction mode without
#   BGWORKER_DATABASE_POOLER=transaction; 42P05, already exists, is in 42), 28 invalid
#   authorization, 3D invalid catalog name (database
#   gone), 40 transaction rollback (serialization failure, deadlock), 42 syntax error or
#   access rule violation (schema not migrated, a missing grant: a deployment problem, not
#   the event's), 53 insufficient resources, 57 operator intervention (shutdown, cancel),
#   58 system error, XX internal error.
INFRASTRUCTURE_SQLSTATE_CLASSES: Final = frozenset(
    {"08", "26", "28", "3D", "40", "42", "53", "57", "58", "XX"}
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


# -- lost connections ---------------------------------------------------------------------

# SQLSTATEs that say the connection, not the statement, failed: 08 connection exception
# (a connection gone mid-operation is 08003), and the server shutting down or starting up.
LOST_SQLSTATES: Final = frozenset({"57P01", "57P02", "57P03"})
_CLIENTS: Final = {"asyncpg": logs.POSTGRESQL, "aiormq": logs.RABBITMQ, "aio_pika": logs.RABBITMQ}


def lost_service(exc: BaseException) -> str | None:
    """The service whose connection ``exc`` says is gone (or cannot be made), or None when it
    says something else (a statement refused, a bug, a refusal of credentials)."""
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = getattr(exc, "sqlstate", None) or ""
        return logs.POSTGRESQL if sqlstate[:2] == "08" or sqlstate in LOST_SQLSTATES else None
    if isinstance(exc, asyncpg.InterfaceError | asyncpg.InternalClientError):
        lost = "closed" in str(exc) or isinstance(exc, asyncpg.InternalClientError)
        return logs.POSTGRESQL if lost else None
    if isinstance(exc, broker.PublishError) and exc.__cause__ is not None:
        return lost_service(exc.__cause__)
    if not logs.connection_trouble(exc):
        return None
    return _client_of(exc)


def _client_of(exc: BaseException) -> str | None:
    """Which client library raised ``exc``: its type's module, else the innermost library
    frame of its traceback (an OSError or a TimeoutError names no service itself), looking
    at what caused it too."""
    seen: BaseException | None = exc
    for _ in range(5):  # a chain of causes, not a loop
        if seen is None:
            return None
        module = type(seen).__module__.partition(".")[0]
        if module in _CLIENTS:
            return _CLIENTS[module]
        for frame, _ in reversed(list(traceback.walk_tb(seen.__traceback__))):
            module = str(frame.f_globals.get("__name__", "")).partition(".")[0]
            if module in _CLIENTS:
                return _CLIENTS[module]
        seen = seen.__cause__ or seen.__context__
    return None


def report(exc: BaseException, what: str) -> bool:
    """Tell the service's Outage about a failure a lost connection explains; True when it
    was one (the caller need not log it at WARNING: the Outage said it once), False when the
    caller should say it itself. A PostgreSQL pool has no event of its own for a lost
    connection, so its first failure is the news; RabbitMQ's robust connection reports its
    own loss (``broker.connect``), and failures then are only its echo."""
    service = lost_service(exc)
    if service is None:
        return False
    outage = logs.OUTAGES[service]
    if service == logs.RABBITMQ and not outage.settling():
        return False
    outage.lost(exc, what)
    return True


def level(exc: BaseException, what: str) -> int:
    """The level of a line about a failure: INFO when a lost connection explains it (the
    Outage said so once, at WARNING: ``report``), WARNING otherwise."""
    return logging.INFO if report(exc, what) else logging.WARNING


# -- start-up -----------------------------------------------------------------------------

# SQLSTATEs a starting command waits out: the server starting up or shutting down, or out of
# connections for now (53300). Refused credentials (28) or an unknown database (3D) are not.
STARTING_SQLSTATES: Final = LOST_SQLSTATES | {"53300"}
STARTUP_BACKOFF_SECONDS: Final = (1.0, 2.0, 4.0, 8.0)  # then 8 s until the time is up
# A network that is not there yet (an interface coming up, a route being set).
NETWORK_ERRNOS: Final = frozenset(
    {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN, errno.EHOSTDOWN}
)


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and what caused it (``__cause__``/``__context__``, aiohttp's ``os_error``)."""
    found: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(found) < 8 and seen not in found:
        found.append(seen)
        os_error = getattr(seen, "os_error", None)
        seen = (
            seen.__cause__
            or seen.__context__
            or (os_error if isinstance(os_error, BaseException) else None)
        )
    return found


def is_transient(exc: BaseException) -> bool:
    """Whether a service that failed to connect may answer if asked again soon: refused (not
    listening yet: restarting, or started after us), reset, timed out, starting up, out of
    connections, or a storage that is down. Not: an address that does not resolve (a name
    the resolver does not know; its "try again" is transient), refused credentials, a
    database or vhost that does not exist, or a service that answered with a refusal."""
    chain = _chain(exc)
    for cause in chain:
        if isinstance(cause, socket.gaierror):
            return cause.errno == socket.EAI_AGAIN
    for cause in chain:
        if isinstance(cause, asyncpg.PostgresError):
            sqlstate = getattr(cause, "sqlstate", None) or ""
            return sqlstate[:2] == "08" or sqlstate in STARTING_SQLSTATES
    if isinstance(exc, storage.StorageUnavailableError):
        return True  # storage.StorageError (it answered: no bucket, access denied) is not
    if isinstance(exc, asyncpg.InterfaceError | asyncpg.InternalClientError):
        return True  # a connection closed during its handshake
    if not logs.connection_trouble(exc):  # a refusal: credentials, vhost, protocol
        return False
    # The network's answer, not the machine's (a PermissionError is an OSError too).
    return any(
        isinstance(cause, ConnectionError | TimeoutError | EOFError)
        or (isinstance(cause, OSError) and cause.errno in NETWORK_ERRNOS)
        for cause in chain
    )


async def ride_out(attempt: Callable[[], Awaitable[T]], *, service: str, seconds: float) -> T:
    """``attempt()``, again while it fails with a transient error (``is_transient``), for
    up to ``seconds``: a service restarting, or started after us, is waited for, with one
    WARNING line per retry. Any other error, or the last one once the time is up, is
    raised for the caller to name the service."""
    give_up = time.monotonic() + seconds
    backoff = list(STARTUP_BACKOFF_SECONDS)
    while True:
        try:
            return await attempt()
        except Exception as exc:
            left = give_up - time.monotonic()
            if left <= 0 or not is_transient(exc):
                raise
            delay = min(backoff.pop(0) if len(backoff) > 1 else backoff[0], left)
            log.warning(
                "%s is not available yet (%s); retrying in %.0f s (gives up in %.0f s: "
                "BGWORKER_STARTUP_RETRY_SECONDS)",
                service,
                logs.describe(exc),
                delay,
                left,
            )
            await asyncio.sleep(delay)
