"""Several broker addresses: ``BGWORKER_AMQP_URL`` as a comma-separated list of AMQP URLs.

A RabbitMQ cluster is several nodes, and a client connected to one of them must move to
another when its node goes. aio-pika's ``connect_robust`` takes one URL and redials that
URL forever, so a client whose node is gone for good never comes back. ``Connection`` is
aio-pika's robust connection with one change: each (re)connect attempt is one pass over
the list, starting after the node it last had, taking the first that answers and on which
the robust channels' restore succeeds (exchanges, queues, bindings, consumers). The
channels, and so the consumers and everything the robust channel restores, are the same
objects across nodes: the worker's consumer comes back on the next node by itself.

A load balancer in front of the nodes (HAProxy, a Kubernetes Service) works as well, with a
single URL; the list needs no extra moving part. Order is preference: every client starts
with the first address, so give hosts different orders to spread connections.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Final
from urllib.parse import urlsplit

import aio_pika
from aio_pika.abc import AbstractConnection
from aio_pika.robust_connection import RobustConnection
from yarl import URL

SCHEMES: Final = ("amqp", "amqps")
# One attempt on one address: without a bound, a node whose host is cut off (no RST) holds
# the attempt for the kernel's SYN timeout (minutes) before the next address is tried.
CONNECT_TIMEOUT: Final = 10.0


def parse_urls(value: str) -> tuple[str, ...]:
    """The URLs of a comma-separated list (one URL is a list of one); ValueError naming the
    bad entry by position and address, never its credentials."""
    entries = [entry.strip() for entry in value.split(",")]
    urls: list[str] = []
    for number, entry in enumerate(entries, 1):
        where = f"entry {number} of {len(entries)}" if len(entries) > 1 else "the URL"
        if not entry:
            raise ValueError(f"{where} is empty (a comma too many?)")
        try:
            parts = urlsplit(entry)
            parts.port  # noqa: B018  (ValueError when not a number in 0-65535)
        except ValueError as exc:
            raise ValueError(f"{where} is not a valid URL ({exc})") from None
        if parts.scheme not in SCHEMES or not parts.hostname:
            raise ValueError(
                f"{where} must start with amqp:// or amqps:// and name a host (it has "
                f"scheme {parts.scheme!r} and host {parts.hostname or ''!r})"
            )
        urls.append(entry)
    return tuple(urls)


class Connection(RobustConnection):
    """A robust connection over several addresses (see the module doc)."""

    def __init__(self, url: URL, loop: asyncio.AbstractEventLoop | None = None, **kwargs: Any):
        urls: Sequence[URL] = kwargs.pop("urls", ()) or (url,)
        super().__init__(url, loop, **kwargs)
        self.urls: tuple[URL, ...] = tuple(urls)
        self.node = -1  # index of the address in use; -1 before the first connect

    # aio-pika's robust connection calls this (name-mangled private) method for every
    # attempt, the first one and each reconnect, then sleeps ``reconnect_interval`` after a
    # failure. It connects to ``self.url``: we point that at each address in turn. A test
    # (tests/unit/test_failover.py) fails if aio-pika renames it.
    async def _RobustConnection__connect_transport(self) -> None:
        connect = super()._RobustConnection__connect_transport  # type: ignore[misc]
        error: BaseException | None = None
        start = self.node + 1
        for step in range(len(self.urls)):
            index = (start + step) % len(self.urls)
            self.url = self.urls[index]
            try:
                await connect()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # refused, timed out, or a restore it could not do
                error = exc
                continue
            self.node = index
            return
        assert error is not None
        raise error


async def connect_robust(
    value: str, *, timeout: float = CONNECT_TIMEOUT, **kwargs: Any
) -> Connection:
    """A robust connection over the addresses of ``value`` (see ``parse_urls``)."""
    urls = [URL(url) for url in parse_urls(value)]
    # Made here, not by aio_pika.connect_robust: that one copies extra keywords into the
    # URL's query. aio-pika's own options in a URL's query (reconnect_interval) are read
    # from the first address.
    connection = Connection(urls[0], urls=urls, **kwargs)
    await connection.connect(timeout=timeout)
    return connection


async def connect_plain(
    value: str, *, timeout: float = CONNECT_TIMEOUT, **kwargs: Any
) -> AbstractConnection:
    """A plain (not robust) connection to the first address of ``value`` that answers, for
    commands that should fail rather than reconnect; the last address's error if none."""
    error: BaseException | None = None
    for url in parse_urls(value):
        try:
            connection: AbstractConnection = await aio_pika.connect(url, timeout=timeout, **kwargs)
            return connection
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = exc
    assert error is not None
    raise error
