"""Logging setup, and the job fields every log line about a job carries.

A job runs in its own asyncio task, which has its own copy of the context (PEP 567:
``create_task`` copies it), so :func:`bind` there labels that job's lines only: its own,
the handler's, the store's and the progress saver's (a task made inside copies it again). A
synchronous handler's thread gets the job's context explicitly (``handlers.Execution``).

``BGWORKER_LOG_FORMAT=json`` writes one JSON object a line (python-json-logger) with
``request_id``, ``file_type``, ``attempt`` and ``worker_id`` as fields; ``text`` (the
default) is the usual line for a terminal.
"""

from __future__ import annotations

import contextvars
import logging
import math
import sys
import threading
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final, Literal
from urllib.parse import urlsplit

from pythonjsonlogger import json as json_logger

NO_JOB: Final[Mapping[str, object]] = MappingProxyType({})
# The fields of the job whose task (or handler thread) is logging; empty outside a job.
# Never mutated in place: bind() sets a new mapping, so a copied context keeps its own.
JOB_FIELDS: Final[contextvars.ContextVar[Mapping[str, object]]] = contextvars.ContextVar(
    "bgworker_job_fields", default=NO_JOB
)
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JSON_FORMAT: Final = "%(levelname)s %(name)s %(message)s"

Format = Literal["text", "json"]


def bind(**fields: object) -> None:
    """Add job fields to the current context (a job task's own: see the module doc)."""
    JOB_FIELDS.set({**JOB_FIELDS.get(), **fields})


def about(request_id: object) -> dict[str, object]:
    """``extra=`` for a line about a request logged outside its job's task (the outbox)."""
    return {"request_id": str(request_id)}


class JobFields(logging.Filter):
    """Copies the current job's fields onto each record (a record's own extra wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in JOB_FIELDS.get().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


def formatter(fmt: Format) -> logging.Formatter:
    if fmt == "json":
        return json_logger.JsonFormatter(
            JSON_FORMAT,
            # RFC 3339 in UTC, from the record's own creation time.
            timestamp="time",
            rename_fields={"levelname": "level", "name": "logger"},
            # ASCII only: a message may hold a request's filename or error text, and a raw
            # U+2028/U+2029 (valid in JSON) splits the line for readers that honour Unicode
            # line breaks (Python's str.splitlines), so escape everything non-ASCII.
            json_ensure_ascii=True,
        )
    return logging.Formatter(TEXT_FORMAT)


def configure(level: str, fmt: Format) -> None:
    """One stderr handler on the root logger, replacing any (``basicConfig(force=True)``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(fmt))
    handler.addFilter(JobFields())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    quiet_libraries()


def describe(exc: BaseException | None) -> str:
    """What failed, for a log line: the exception's text, or its type's name when the text
    is empty (a bare TimeoutError or a closed channel's error says nothing): never ``()``."""
    if exc is None:
        return "no reason given"
    return str(exc).strip() or type(exc).__name__


# -- connections --------------------------------------------------------------------------


def address(url: str) -> str:
    """``host:port`` of a service URL, for a log line (never its credentials); of each URL
    of a comma-separated list (``BGWORKER_AMQP_URL`` naming several nodes), comma-joined."""
    several = url.split(",")
    if len(several) > 1 and all("://" in one for one in several):
        return ",".join(address(one.strip()) for one in several)
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{parts.hostname or '?'}:{port}" if port else parts.hostname or "?"


# The logger of the lines an operator's alerting watches: a connection lost, and back.
CONNECTIONS: Final = logging.getLogger("bgworker.connections")
# Calls in flight when a connection went down keep failing for a moment after it is back:
# part of the same outage, not a new one.
SETTLE_SECONDS: Final = 5.0


class Outage:
    """A service's connection as the log tells it: one WARNING when it is lost (naming the
    service, and that bgworker reconnects), one INFO when it is back; whatever fails in
    between is DEBUG. Thread-safe: the lease keeper reports from its own thread."""

    def __init__(self, service: str) -> None:
        self.service = service  # "RabbitMQ", or "RabbitMQ at host:port" once located
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._back_at = -math.inf

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def settling(self) -> bool:
        """Down, or back so recently that a call made before still fails."""
        return self.down or time.monotonic() - self._back_at < SETTLE_SECONDS

    def lost(self, exc: BaseException | None, what: str = "") -> None:
        now = time.monotonic()
        with self._lock:
            first = self._down_since is None and now - self._back_at >= SETTLE_SECONDS
            if first:
                self._down_since = now
        if first:
            CONNECTIONS.warning(
                "lost the connection to %s (%s); reconnecting", self.service, describe(exc)
            )
        else:
            CONNECTIONS.debug(
                "%s: %s still away (%s)", what or "a call", self.service, describe(exc)
            )

    def back(self) -> None:
        now = time.monotonic()
        with self._lock:
            since, self._down_since = self._down_since, None
            if since is not None:
                self._back_at = now
        if since is not None:
            CONNECTIONS.info("connection to %s is back (after %.1f s)", self.service, now - since)

    def forget(self) -> None:
        """Up, silently (a new worker starts from a clean slate)."""
        with self._lock:
            self._down_since, self._back_at = None, -math.inf


POSTGRESQL: Final = "PostgreSQL"
RABBITMQ: Final = "RabbitMQ"
# One per service and process: every part of a worker (and every worker of a process) that
# finds the connection gone tells the same Outage, so the log says it once.
OUTAGES: Final = {POSTGRESQL: Outage(POSTGRESQL), RABBITMQ: Outage(RABBITMQ)}


def locate(service: str, url: str) -> None:
    """Name the service's address in its lines ("PostgreSQL at 127.0.0.1:5432"), and start
    from a clean slate (a worker starting)."""
    outage = OUTAGES[service]
    outage.service = f"{service} at {address(url)}"
    outage.forget()


# -- the client libraries' own lines ------------------------------------------------------

# Loggers of aio-pika, aiormq and asyncpg that report a lost connection their own way: a
# traceback (aiormq "reader exited abnormally", asyncpg "failed to restore the pool
# connection floor"), an ERROR per channel whose close callback finds the connection gone,
# a line per reconnect attempt. bgworker's Outage says it once; these go to DEBUG.
NOISY_LOGGERS: Final = (
    "aiormq.connection",
    "aiormq.channel",
    "aio_pika.connection",
    "aio_pika.robust_connection",
    "aio_pika.channel",
    "aio_pika.robust_channel",
    "aio_pika.queue",
    "aio_pika.robust_queue",
    "aio_pika.tools",
    "asyncpg.pool",
)
# Their lines that are about reconnecting, whatever exception they carry (if any).
RECONNECT_MESSAGES: Final = (
    "Connection to %s closed. Reconnecting after %r seconds.",
    'Connection attempt to "%s" failed: %s. Reconnecting after %r seconds.',
    'Connection attempt to "%s" cancelled. Reconnecting after %r seconds.',
)
# The broker closing a connection itself: routine with 320 CONNECTION_FORCED (a node
# shutting down, an operator's close_connection), not with the codes that blame the client.
REMOTE_CLOSE_MESSAGE: Final = (
    'Unexpected connection close from remote "%s", Connection.Close(reply_code=%r, reply_text=%r)'
)
FORCED_CLOSE: Final = 320


def connection_trouble(exc: BaseException) -> bool:
    """Whether ``exc`` says a connection is gone or cannot be made: the errors a routine
    reconnect raises, not a refusal (credentials, a frame the broker rejects, a bad
    statement) nor any other error."""
    import asyncio  # here, as aiormq: only a library line at WARNING gets this far

    import aiormq.exceptions as amqp

    if type(exc) is amqp.ConnectionClosed:
        # Closed by the broker with a code it does not map to a client's fault.
        return exc.args[:1] in ((FORCED_CLOSE,), (None,))
    # (IncompatibleProtocolError is not one: aiormq raises it too for a connection closed
    # before the broker's greeting, which is what a broker starting up or a reset does.)
    refusals = (
        amqp.ConnectionClosed,  # the subclasses: frame, syntax, not allowed... (501-541)
        amqp.AuthenticationError,
        amqp.ProbableAuthenticationError,
    )
    if isinstance(exc, refusals):
        return False
    if isinstance(exc, amqp.AMQPConnectionError | amqp.ChannelInvalidStateError):
        return True
    if isinstance(exc, OSError | EOFError | TimeoutError | asyncio.CancelledError):
        return True  # reset, refused, unreachable, an incomplete read; the wait cut short
    # aio-pika's "<Connection ...> closed" from a channel that tried to reopen.
    return isinstance(exc, RuntimeError) and str(exc).endswith("closed")


class LibraryNoise(logging.Filter):
    """Moves a client library's line about a lost connection to DEBUG (shown only when
    DEBUG is on); every other line of theirs, a real error included, passes unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not self._about_reconnecting(record):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)

    @staticmethod
    def _about_reconnecting(record: logging.LogRecord) -> bool:
        if record.msg in RECONNECT_MESSAGES:
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        if record.msg == REMOTE_CLOSE_MESSAGE:
            return args[1:2] == (FORCED_CLOSE,)
        errors = [a for a in args if isinstance(a, BaseException)]
        if record.exc_info and record.exc_info[1] is not None:
            errors.append(record.exc_info[1])
        return bool(errors) and all(connection_trouble(e) for e in errors)


_NOISE: Final = LibraryNoise()


def quiet_libraries() -> None:
    """Put the LibraryNoise filter on the client libraries' loggers (once)."""
    for name in NOISY_LOGGERS:
        logger = logging.getLogger(name)
        if _NOISE not in logger.filters:
            logger.addFilter(_NOISE)
