"""A TCP proxy between network namespaces, the process behind ``Hosts.proxy`` (proxy.py):
it listens in one namespace and connects in another (a socket stays in the namespace it was
made in, so one process can hold both). This is how hosts reach services that listen on the
root namespace's loopback only (PostgreSQL, the SMTP sink, S3) without changing their
configuration, how the test process reaches a service inside a host, and where latency is
added (``--delay-ms``; the kernel here has no netem). SIGUSR1 re-reads the delay from
``--delay-file``.

    python -m tests.hosts.relay --listen NS:ADDR:PORT --upstream NS:ADDR:PORT [--delay-ms D]

NS is a name under /run/netns, or empty for the root namespace. Prints "ready PORT" once it
listens (PORT 0 in --listen picks a free one).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import signal
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.tcp_proxy import TcpProxy

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_ROOT = os.open("/proc/self/ns/net", os.O_RDONLY)  # the namespace the process started in


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextmanager
def in_netns(ns: str) -> Iterator[None]:
    """Sockets made inside the block belong to namespace ``ns`` ("" = where we started)."""
    if not ns:
        yield
        return
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        _setns(fd)
        try:
            yield
        finally:
            _setns(_ROOT)
    finally:
        os.close(fd)


def parse_end(text: str) -> tuple[str, str, int]:
    ns, addr, port = text.rsplit(":", 2)
    return ns, addr, int(port)


class NsProxy(TcpProxy):
    def __init__(self, listen: tuple[str, str, int], upstream: tuple[str, str, int]) -> None:
        super().__init__((upstream[1], upstream[2]))
        self.listen = listen
        self.upstream_ns = upstream[0]
        self.queued = True

    async def start(self) -> None:
        ns, addr, port = self.listen
        with in_netns(ns):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((addr, port))
        self.port = sock.getsockname()[1]
        self._server = await asyncio.start_server(self._accept, sock=sock, backlog=1024)

    async def open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        with in_netns(self.upstream_ns):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, self.upstream)
        except OSError:
            sock.close()
            raise
        return await asyncio.open_connection(sock=sock)


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.hosts.relay")
    parser.add_argument("--listen", required=True, type=parse_end)
    parser.add_argument("--upstream", required=True, type=parse_end)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--delay-file", type=Path)
    args = parser.parse_args(argv)
    proxy = NsProxy(args.listen, args.upstream)
    proxy.delay = args.delay_ms / 1000

    def reread() -> None:
        if args.delay_file is not None:
            proxy.delay = float(args.delay_file.read_text()) / 1000

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, reread)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await proxy.start()
    print(f"ready {proxy.port}", flush=True)
    await stop.wait()
    await proxy.close()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(130)
