"""Where the scale-out benchmark's parts run (``bench.scaleout``).

- ``Loopback``: every process on this machine's loopback, the machine's RabbitMQ (its CPU
  includes other users' traffic) and PostgreSQL. Works anywhere the bench works.
- ``Hosts``: worker hosts made of network namespaces (``tests.hosts``), a 3-node RabbitMQ
  cluster with one node per namespace, the worker host ``i`` on node ``i % 3``, PostgreSQL
  through the hosts' proxy, SeaweedFS on the bridge address. Needs root.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final, Protocol

from bench import common, services

LOOPBACK: Final = "127.0.0.1"


class Site(Protocol):
    s3_ip: str  # the address SeaweedFS listens on, reachable from every worker

    def describe(self) -> str: ...

    def amqp_url(self, host: int) -> str:
        """The broker URL of worker host ``host`` (and of the bench for ``0``)."""
        ...

    def worker_dsn(self, dsn: str) -> str:
        """``dsn`` (a database on the machine's PostgreSQL) as a worker host reaches it."""
        ...

    def prefix(self, host: int) -> list[str]:
        """What runs a command on worker host ``host``."""
        ...

    def broker_pids(self) -> list[int]: ...

    def harness_pids(self) -> list[int]:
        """Processes of the test set-up itself (a proxy): measured, left out of the model."""
        ...


class Loopback:
    s3_ip = LOOPBACK

    def describe(self) -> str:
        return "loopback: one machine, its own RabbitMQ node (shared) and PostgreSQL"

    def amqp_url(self, host: int) -> str:
        return common.AMQP_URL

    def worker_dsn(self, dsn: str) -> str:
        return dsn

    def prefix(self, host: int) -> list[str]:
        return []

    def broker_pids(self) -> list[int]:
        return services.pids_named("beam.smp")

    def harness_pids(self) -> list[int]:
        return []


def hosts_unavailable() -> str | None:
    """Why namespace hosts cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("ip", "rabbitmq-server"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if importlib.util.find_spec("tests.hosts") is None:
        return "tests.hosts (the namespace hosts tooling) is not in this tree"
    return None


@contextlib.asynccontextmanager
async def open_site(hosts: int, loopback: bool, logdir: Path) -> AsyncIterator[Site]:
    if loopback:
        yield Loopback()
        return
    why = hosts_unavailable()
    if why:
        raise RuntimeError(f"namespace hosts: {why} (--loopback runs every part on loopback)")
    raise NotImplementedError("namespace hosts: waiting for tests.hosts")
    yield Loopback()  # pragma: no cover
