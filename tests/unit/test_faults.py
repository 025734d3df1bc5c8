"""Whose fault an error is, and how the log tells a lost connection (bgworker.faults,
bgworker.observe.logs): which start-up errors are waited out, which library lines are noise."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import uuid

import aiormq.exceptions as amqp
import asyncpg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bgworker import faults, storage
from bgworker.observe import logs
from bgworker.worker import rejection


def _caused(exc: BaseException, cause: BaseException) -> BaseException:
    exc.__cause__ = cause
    return exc


TRANSIENT = {
    "refused": ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
    "reset": ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
    "timeout": TimeoutError(),
    "no route": OSError(errno.EHOSTUNREACH, "No route to host"),
    "resolver says try again": socket.gaierror(socket.EAI_AGAIN, "Temporary failure"),
    "amqp reset": _caused(amqp.AMQPConnectionError(104, "reset"), ConnectionResetError()),
    "amqp closed before the greeting": amqp.IncompatibleProtocolError(),
    "pg starting up": asyncpg.CannotConnectNowError("the database system is starting up"),
    "pg too many connections": asyncpg.TooManyConnectionsError("too many clients"),
    "pg connection lost": asyncpg.ConnectionDoesNotExistError("closed mid-operation"),
    "storage down": _caused(
        storage.StorageUnavailableError("S3: could not connect"), ConnectionRefusedError()
    ),
}
FATAL = {
    "unknown host": socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
    "amqp unknown host": _caused(
        amqp.AMQPConnectionError(-2, "unknown"), socket.gaierror(socket.EAI_NONAME, "unknown")
    ),
    "storage unknown host": _caused(
        storage.StorageUnavailableError("S3: could not connect"),
        socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
    ),
    "amqp login": amqp.ProbableAuthenticationError("ACCESS_REFUSED"),
    "amqp vhost": amqp.ConnectionNotAllowed("NOT_ALLOWED - vhost"),
    "pg password": asyncpg.InvalidPasswordError("password authentication failed"),
    "pg no database": asyncpg.InvalidCatalogNameError('database "x" does not exist'),
    "storage refuses": storage.StorageError("S3 bucket 'b': 404, no such bucket"),
    "permission": PermissionError(errno.EACCES, "Permission denied"),
    "a bug": ValueError("no"),
}


@pytest.mark.parametrize("name", sorted(TRANSIENT))
def test_start_up_waits_out(name: str) -> None:
    assert faults.is_transient(TRANSIENT[name])


@pytest.mark.parametrize("name", sorted(FATAL))
def test_start_up_fails_at_once_on(name: str) -> None:
    assert not faults.is_transient(FATAL[name])


async def test_ride_out_retries_until_it_answers_and_says_so_each_time(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(faults, "STARTUP_BACKOFF_SECONDS", (0.0,))  # the clock, not the logic
    answers: list[BaseException | str] = [ConnectionRefusedError(), TimeoutError(), "up"]

    async def connect() -> str:
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    with caplog.at_level(logging.WARNING, logger="bgworker.faults"):
        assert await faults.ride_out(connect, service="RabbitMQ at h:1", seconds=60) == "up"
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert all(line.startswith("RabbitMQ at h:1 is not available yet (") for line in lines)
    assert "(TimeoutError)" in lines[1]  # never an empty reason


async def test_ride_out_raises_a_fatal_error_at_once_and_the_last_one_when_time_is_up() -> None:
    calls = 0

    async def refused_login() -> None:
        nonlocal calls
        calls += 1
        raise asyncpg.InvalidPasswordError("no")

    with pytest.raises(asyncpg.InvalidPasswordError):
        await faults.ride_out(refused_login, service="PostgreSQL", seconds=60)
    assert calls == 1

    async def refused() -> None:
        raise ConnectionRefusedError()

    with pytest.raises(ConnectionRefusedError):
        await faults.ride_out(refused, service="PostgreSQL", seconds=0)


def test_describe_never_says_nothing() -> None:
    assert logs.describe(TimeoutError()) == "TimeoutError"
    assert logs.describe(amqp.ChannelInvalidStateError()) == "ChannelInvalidStateError"
    assert logs.describe(ValueError("bad")) == "bad"
    assert logs.describe(None)


def _record(
    name: str, level: int, msg: str, *args: object, exc: BaseException | None = None
) -> logging.LogRecord:
    record = logging.LogRecord(name, level, __file__, 1, msg, args, None)
    if exc is not None:
        record.exc_info = (type(exc), exc, None)
    return record


@pytest.mark.parametrize(
    "record",
    [
        _record(
            "aiormq.connection",
            logging.WARNING,
            "Cancelling cause reader exited abnormally",
            exc=amqp.AMQPConnectionError("reset"),
        ),
        _record(
            "aio_pika.tools",
            logging.ERROR,
            "Callback %r error: %s: %s",
            "cb",
            "RuntimeError",
            RuntimeError('<Connection: "amqp://h/"> closed'),
        ),
        _record(
            "aio_pika.robust_connection",
            logging.WARNING,
            'Connection attempt to "%s" failed: %s. Reconnecting after %r seconds.',
            "amqp://h/",
            "x",
            5,
        ),
        _record(
            "aiormq.connection",
            logging.ERROR,
            logs.REMOTE_CLOSE_MESSAGE,
            "amqp://h/",
            320,
            "CONNECTION_FORCED - broker forced connection closure",
        ),
        _record(
            "asyncpg.pool",
            logging.WARNING,
            "Failed to restore the pool connection floor; retrying",
            exc=ConnectionRefusedError(),
        ),
    ],
    ids=["reader", "channel-callback", "reconnect-attempt", "forced-close", "pool-floor"],
)
def test_library_lines_about_a_lost_connection_go_to_debug(record: logging.LogRecord) -> None:
    logging.getLogger(record.name).setLevel(logging.INFO)
    try:
        assert not logs.LibraryNoise().filter(record)  # dropped: DEBUG is off
        assert record.levelname == "DEBUG"
        logging.getLogger(record.name).setLevel(logging.DEBUG)
        assert logs.LibraryNoise().filter(record)  # shown, at DEBUG, when DEBUG is on
    finally:
        logging.getLogger(record.name).setLevel(logging.NOTSET)


@pytest.mark.parametrize(
    "record",
    [
        _record(
            "aiormq.connection",
            logging.ERROR,
            logs.REMOTE_CLOSE_MESSAGE,
            "amqp://h/",
            540,
            "NOT_IMPLEMENTED - queue.delete with if-unused on a quorum queue",
        ),
        _record(
            "aiormq.connection",
            logging.WARNING,
            "Cancelling cause reader exited abnormally",
            exc=amqp.ConnectionSyntaxError("a frame the broker refused"),
        ),
        _record(
            "aio_pika.tools",
            logging.ERROR,
            "Callback %r error: %s: %s",
            "cb",
            "KeyError",
            KeyError("a bug in a callback"),
        ),
        _record("aiormq.connection", logging.ERROR, "Unexpected frame %r", "frame"),
    ],
    ids=["not-implemented", "syntax-error", "callback-bug", "unexpected-frame"],
)
def test_every_other_library_line_passes_unchanged(record: logging.LogRecord) -> None:
    level = record.levelname
    assert logs.LibraryNoise().filter(record)
    assert record.levelname == level


def test_an_outage_is_one_warning_then_one_info(caplog: pytest.LogCaptureFixture) -> None:
    outage = logs.Outage("PostgreSQL at h:5432")
    with caplog.at_level(logging.DEBUG, logger="bgworker.connections"):
        outage.lost(ConnectionResetError(), "reaper")
        outage.lost(TimeoutError(), "outbox sweep")
        outage.back()
        outage.back()
        outage.lost(ConnectionResetError(), "a call in flight")  # settling: same outage
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in lines] == ["WARNING", "DEBUG", "INFO", "DEBUG"]
    assert (
        lines[0][1]
        == "lost the connection to PostgreSQL at h:5432 (ConnectionResetError); reconnecting"
    )
    assert lines[2][1].startswith("connection to PostgreSQL at h:5432 is back (after ")
    assert not outage.down


def test_lost_connections_are_told_apart_from_refusals() -> None:
    assert faults.lost_service(asyncpg.ConnectionDoesNotExistError("gone")) == logs.POSTGRESQL
    assert faults.lost_service(asyncpg.AdminShutdownError("shutdown")) == logs.POSTGRESQL
    assert faults.lost_service(asyncpg.UniqueViolationError("dup")) is None
    assert faults.lost_service(amqp.AMQPConnectionError("reset")) == logs.RABBITMQ
    assert faults.lost_service(amqp.ProbableAuthenticationError("no")) is None
    assert faults.lost_service(ConnectionResetError()) is None  # raised by whom? not known


@given(st.one_of(st.none(), st.text(), st.uuids().map(str), st.uuids().map(lambda u: u.hex)))
def test_a_request_id_from_a_message_id_is_only_a_canonical_uuid(message_id: str | None) -> None:
    found = rejection.request_id_from(message_id)
    if found is not None:
        assert message_id is not None and str(found) == message_id.lower()
    else:
        try:
            parsed = uuid.UUID(message_id or "")
        except ValueError:
            return
        assert str(parsed) != (message_id or "").lower()


def test_a_cancelled_wait_is_connection_trouble_not_a_refusal() -> None:
    assert logs.connection_trouble(asyncio.CancelledError())
