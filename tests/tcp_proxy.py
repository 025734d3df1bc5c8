"""A TCP proxy the test controls, between bgworker and one service: connections through it
can be cut, refused, reset or held (a partition) without touching the shared services or
anyone else's connections to them.

Runs on the test's event loop: put only processes or in-process workers that never block
their loop behind it (a worker subprocess is always fine). With ``delay`` it adds latency:
each chunk is passed on ``delay`` seconds after it arrived, without slowing the stream
otherwise (the kernel here has no netem). tests/hosts/relay.py runs it between network
namespaces.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

from bgworker.cli.smtp_sink import free_port

CHUNK = 65536


class Mode(enum.Enum):
    FORWARD = "forward"  # pass bytes both ways
    RESET = "reset"  # accept, then reset at once ("connection reset by peer")
    # A partition: nothing goes through, either way, and nothing is reset; what is sent
    # waits (as TCP retransmits do) and arrives once the mode is FORWARD again.
    HOLD = "hold"


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a RST rather than a FIN (SO_LINGER 0), as a dropped connection looks."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class TcpProxy:
    """Listens on 127.0.0.1:``port`` and forwards to ``upstream`` (host, port)."""

    def __init__(self, upstream: tuple[str, int], delay: float = 0.0) -> None:
        self.upstream = upstream
        self.delay = delay  # seconds each chunk waits, each way
        # Send through the delaying queue even at delay 0, so a delay set later applies to
        # connections already open (tests/hosts/relay.py changes it on a signal).
        self.queued = False
        self.port = free_port()
        self._mode = Mode.FORWARD
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.accepted = 0  # connections accepted so far (any mode)
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._pipes: set[asyncio.Task[None]] = set()

    @property
    def mode(self) -> Mode:
        return self._mode

    @mode.setter
    def mode(self, mode: Mode) -> None:
        self._mode = mode
        if mode is Mode.HOLD:
            self._flowing.clear()
        else:
            self._flowing.set()

    def url(self, service_url: str) -> str:
        """``service_url`` with its host and port replaced by this proxy's."""
        parts = urlsplit(service_url)
        auth = parts.netloc.rpartition("@")[0]
        netloc = f"{auth}@127.0.0.1:{self.port}" if auth else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    async def start(self) -> None:
        """Listen (again): connections are accepted in the current mode."""
        if self._server is None:
            self._server = await asyncio.start_server(
                self._accept, "127.0.0.1", self.port, reuse_address=True
            )

    async def refuse(self) -> None:
        """Stop listening: a connect is refused (the service is down), and what is open
        is reset."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self.cut()

    def cut(self) -> None:
        """Reset every connection open through the proxy (both sides); new ones are
        accepted as the mode says."""
        for writer in list(self._open):
            _reset(writer)
        self._open.clear()

    async def close(self) -> None:
        await self.refuse()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.mode is Mode.RESET:
            _reset(writer)
            return
        self._open.add(writer)
        await self._flowing.wait()  # a connection made during a partition waits for it
        try:
            up_reader, up_writer = await self.open_upstream()
        except OSError:
            self._open.discard(writer)
            _reset(writer)
            return
        self._open.add(up_writer)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink), name="tcp-proxy-pipe")
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(*self.upstream)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        delayed: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        queued = self.delay or self.queued
        sender = asyncio.create_task(self._send_late(delayed, sink)) if queued else None
        try:
            while data := await source.read(CHUNK):
                await self._flowing.wait()
                if sender is not None:
                    delayed.put_nowait((asyncio.get_running_loop().time() + self.delay, data))
                    continue
                sink.write(data)
                await sink.drain()
            if sender is not None:  # what is in flight still arrives, then the FIN
                delayed.put_nowait((0.0, b""))
                await sender
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            if sender is not None:
                sender.cancel()
            if sink in self._open:
                self._open.discard(sink)
                sink.close()

    async def _send_late(
        self, delayed: asyncio.Queue[tuple[float, bytes]], sink: asyncio.StreamWriter
    ) -> None:
        """Write each chunk when its time comes: chunks queue behind each other, so the
        delay is added once, not once per chunk waiting ahead."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(OSError):
            while True:
                due, data = await delayed.get()
                if not data:
                    return
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)
                sink.write(data)
                await sink.drain()


@asynccontextmanager
async def proxy_to(service_url: str) -> AsyncIterator[TcpProxy]:
    """A started proxy to the host and port of ``service_url``; closed on exit."""
    parts = urlsplit(service_url)
    assert parts.hostname and parts.port, service_url
    proxy = TcpProxy((parts.hostname, parts.port))
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()
