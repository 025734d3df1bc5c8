"""Round trips per job: a counting TCP proxy in front of PostgreSQL and RabbitMQ.

A contender's processes are pointed at the proxy (its DSN and AMQP URL) for one counting
trial of their own, apart from the timed ones: the proxy is Python in the bench's process,
and the hop it adds would slow the trial it counts. It forwards every byte unchanged and
reads only the framing:

- PostgreSQL: the client's ``Sync`` and simple ``Query`` messages. Each ends a request the
  client then waits on (``ReadyForQuery``), so their number is the round trips, whatever
  was pipelined before the Sync (asyncpg's ``executemany`` sends N executions and one Sync:
  one round trip; ``BEGIN`` and ``COMMIT`` are one each).
- RabbitMQ: AMQP method frames, both ways (``basic.deliver``, ``basic.ack``,
  ``basic.publish``, the broker's publisher confirm, ``basic.consume`` / ``cancel`` and
  their replies, ...). Most AMQP traffic is one-way (a delivery, an ack, a publish are not
  waited on), so methods, not round trips, are what the broker handles per job; content
  header and body frames and heartbeats are left out.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit, urlunsplit

PG_SSL_CODES: Final = (80877103, 80877104)  # SSLRequest, GSSENCRequest: answered by a byte
AMQP_HEADER: Final = 8  # b"AMQP\x00\x00\x09\x01", client to broker only
AMQP_METHOD: Final = 1
FIGURES: Final = ("pg_round_trips_per_job", "amqp_methods_per_job")


@dataclass
class Counts:
    pg_round_trips: int = 0
    amqp_methods: int = 0


class _PgClient:
    """Parses the client side of the PostgreSQL protocol: counts Sync and Query."""

    def __init__(self, counts: Counts) -> None:
        self.counts = counts
        self.buf = bytearray()
        self.started = False

    def feed(self, data: bytes) -> None:
        self.buf += data
        while True:
            if not self.started:
                if len(self.buf) < 8:
                    return
                (size, code) = struct.unpack_from("!ii", self.buf)
                if len(self.buf) < size:
                    return
                del self.buf[:size]
                # The reply to an SSL or GSS request is one byte ('N'): a startup follows.
                self.started = code not in PG_SSL_CODES
                continue
            if len(self.buf) < 5:
                return
            kind = self.buf[0]
            (size,) = struct.unpack_from("!i", self.buf, 1)
            if len(self.buf) < size + 1:
                return
            del self.buf[: size + 1]
            if kind in (ord("S"), ord("Q")):
                self.counts.pg_round_trips += 1


class _AmqpStream:
    """Parses one direction of AMQP 0-9-1 framing: counts method frames."""

    def __init__(self, counts: Counts, *, header: bool) -> None:
        self.counts = counts
        self.buf = bytearray()
        self.header = header  # the client's protocol header comes first

    def feed(self, data: bytes) -> None:
        self.buf += data
        if self.header:
            if len(self.buf) < AMQP_HEADER:
                return
            del self.buf[:AMQP_HEADER]
            self.header = False
        while len(self.buf) >= 7:
            kind, _channel, size = struct.unpack_from("!BHI", self.buf)
            if len(self.buf) < size + 8:
                return
            del self.buf[: size + 8]
            if kind == AMQP_METHOD:
                self.counts.amqp_methods += 1


class _Ignore:
    def feed(self, data: bytes) -> None:
        return None


Parser = _PgClient | _AmqpStream | _Ignore


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, parser: Parser) -> None:
    try:
        while data := await reader.read(65536):
            parser.feed(data)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


@dataclass
class _Proxy:
    target: tuple[str, int]
    parsers: Callable[[], tuple[Parser, Parser]]  # (client -> server, server -> client)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        up, down = self.parsers()
        await asyncio.gather(_pipe(reader, up_writer, up), _pipe(up_reader, writer, down))


def _via(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) > 1 else host))


@dataclass
class Counting:
    """The proxied URLs and what passed through them so far."""

    dsn: str
    amqp_url: str
    counts: Counts

    def snapshot(self) -> Counts:
        return dataclasses.replace(self.counts)

    def per_job(self, since: Counts, jobs: int) -> dict[str, float]:
        """Since ``since`` (the trial's first publish): start-up traffic left out."""
        return {
            "pg_round_trips_per_job": (self.counts.pg_round_trips - since.pg_round_trips) / jobs,
            "amqp_methods_per_job": (self.counts.amqp_methods - since.amqp_methods) / jobs,
        }


@contextlib.asynccontextmanager
async def counting(dsn: str, amqp_url: str) -> AsyncIterator[Counting]:
    counts = Counts()

    def pg() -> tuple[Parser, Parser]:
        return _PgClient(counts), _Ignore()

    def amqp() -> tuple[Parser, Parser]:
        return _AmqpStream(counts, header=True), _AmqpStream(counts, header=False)

    servers = []
    urls = []
    for url, parsers in ((dsn, pg), (amqp_url, amqp)):
        parts = urlsplit(url)
        proxy = _Proxy((parts.hostname or "127.0.0.1", parts.port or 0), parsers)
        server = await asyncio.start_server(proxy.serve, "127.0.0.1", 0)
        servers.append(server)
        urls.append(_via(url, server.sockets[0].getsockname()[1]))
    try:
        yield Counting(urls[0], urls[1], counts)
    finally:
        for server in servers:
            server.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await server.wait_closed()
