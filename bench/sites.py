"""Where the scale-out benchmark's parts run (``bench.scaleout``).

- ``Loopback``: every process on this machine's loopback, the machine's RabbitMQ (its CPU
  includes other users' traffic) and PostgreSQL, SeaweedFS on tmpfs. Works anywhere.
- ``NamespaceHosts``: hosts made of network namespaces (``tests.hosts``): a 3-node RabbitMQ
  cluster (``r1``-``r3``, one node each), SeaweedFS alone on ``s3``, and the worker hosts
  ``w1``..``wN``, worker host ``i`` on node ``i % 3``. PostgreSQL stays the machine's, which
  listens on loopback only: the hosts reach it through a proxy process on the bridge
  (``Hosts.expose``), and the bench reaches node ``r1`` and SeaweedFS through proxies too
  (``Hosts.forward``). The proxies are the set-up's, not bgworker's: their CPU is measured
  as the ``proxy`` part and left out of the capacity model. Needs root.

Either is entered with ``open_site`` and leaves nothing behind: processes, namespaces and
disks go on the way out, also after a failure (``tests.hosts`` also tears down what a
crashed run left, at the next start).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

from bench import common, services
from tests import s3

if TYPE_CHECKING:
    from tests.hosts import Host, Hosts
    from tests.hosts.rabbit import RabbitCluster

NODES: Final = 3
WEED_PORTS: Final = (9333, 8080, 8888, 8333)  # master, volume, filer, S3: a host of its own


@dataclass(frozen=True)
class S3Endpoint:
    worker_url: str  # as the workers reach it
    server: s3.S3Server  # as the bench reaches it (the bucket is made through it)


class Site(Protocol):
    bench_amqp_url: str  # the bench declares, publishes and cleans up through this
    s3: S3Endpoint

    def describe(self) -> str: ...

    def worker_amqp_url(self, host: int) -> str: ...

    def worker_dsn(self, dsn: str) -> str:
        """``dsn`` (a database on the machine's PostgreSQL) as a worker host reaches it."""
        ...

    def spawn(
        self, host: int, name: str, argv: list[str], env: dict[str, str], logdir: Path
    ) -> common.Child:
        """Start ``argv`` on worker host ``host``."""
        ...

    def broker_pids(self) -> list[int]: ...

    def broker_nodes(self, queue: str) -> list[str]:
        """A name for each of ``broker_pids``, the one leading ``queue`` marked."""
        ...

    def harness_pids(self) -> list[int]:
        """Processes of the set-up itself (proxies): measured, left out of the model."""
        ...


class Loopback:
    bench_amqp_url = common.AMQP_URL

    def __init__(self, endpoint: S3Endpoint) -> None:
        self.s3 = endpoint

    def describe(self) -> str:
        return "loopback: one machine, its own RabbitMQ node (shared), PostgreSQL, SeaweedFS"

    def worker_amqp_url(self, host: int) -> str:
        return common.AMQP_URL

    def worker_dsn(self, dsn: str) -> str:
        return dsn

    def spawn(
        self, host: int, name: str, argv: list[str], env: dict[str, str], logdir: Path
    ) -> common.Child:
        return common.Child(name, argv, env, logdir)

    def broker_pids(self) -> list[int]:
        return services.pids_named("beam.smp")

    def broker_nodes(self, queue: str) -> list[str]:
        return ["the machine's node" for _ in self.broker_pids()]

    def harness_pids(self) -> list[int]:
        return []


class _HostChild(common.Child):
    """A process on a namespace host (``Host.popen``: its own process group)."""

    def __init__(
        self, host: Host, name: str, argv: list[str], env: dict[str, str], logdir: Path
    ) -> None:
        self.name = name
        self.log_path = logdir / f"{name}.log"
        self._log = self.log_path.open("ab")
        self.proc = host.popen(
            argv, env=env, clean_env=True, stdout=self._log, stderr=subprocess.STDOUT
        )


class NamespaceHosts:
    def __init__(
        self, hosts: Hosts, cluster: RabbitCluster, workers: int, weed: subprocess.Popen[bytes]
    ) -> None:
        self.hosts = hosts
        self.cluster = cluster
        self.workers = workers
        self.pg = hosts.expose(5432)
        self.amqp = hosts.forward(hosts["r1"], 5672)
        self.bench_amqp_url = f"amqp://guest:guest@127.0.0.1:{self.amqp.port}/"
        store = hosts["s3"]
        s3_proxy = hosts.forward(store, WEED_PORTS[3])
        url = f"http://127.0.0.1:{s3_proxy.port}"
        s3.wait_http(url + "/", weed, timeout=60)
        self.s3 = S3Endpoint(
            f"http://{store.addr}:{WEED_PORTS[3]}", s3.S3Server(url, "seaweedfs", weed.pid)
        )
        self._proxies = [self.pg, self.amqp, s3_proxy]

    def describe(self) -> str:
        return (
            f"{self.workers} worker hosts (network namespaces), a {NODES}-node RabbitMQ "
            "cluster (a namespace each), SeaweedFS on its own namespace, PostgreSQL (the "
            "machine's) through a proxy; all on this machine's cores"
        )

    def worker_amqp_url(self, host: int) -> str:
        return self.cluster[host % NODES].url

    def worker_dsn(self, dsn: str) -> str:
        # postgresql://user@127.0.0.1:5432/db -> the same database at the bridge's proxy
        head, _, database = dsn.rpartition("/")
        user = head.split("//", 1)[1].split("@", 1)[0]
        return f"postgresql://{user}@{self.hosts.gw}:{self.pg.port}/{database}"

    def spawn(
        self, host: int, name: str, argv: list[str], env: dict[str, str], logdir: Path
    ) -> common.Child:
        return _HostChild(self.hosts[f"w{host + 1}"], name, argv, env, logdir)

    def broker_pids(self) -> list[int]:
        return [n.proc.pid for n in self.cluster.nodes if n.proc is not None]

    def broker_nodes(self, queue: str) -> list[str]:
        leader = self.cluster.leader(queue)
        return [n.host.name + (" (leader)" if n is leader else "") for n in self.cluster.nodes]

    def harness_pids(self) -> list[int]:
        return [p.proc.pid for p in self._proxies]


def hosts_unavailable() -> str | None:
    """Why namespace hosts cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if importlib.util.find_spec("tests.hosts") is None:
        return "tests.hosts (the namespace hosts tooling) is not in this tree"
    from tests.hosts import unavailable
    from tests.hosts.rabbit import RabbitCluster

    return unavailable() or RabbitCluster.unavailable()


@contextlib.contextmanager
def _loopback() -> Iterator[Loopback]:
    workdir = Path(tempfile.mkdtemp(prefix="bgw_bench_weed_", dir=common.TMPFS))
    try:
        with s3.seaweedfs(workdir) as server:
            yield Loopback(S3Endpoint(server.url, server))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def _namespaces(workers: int) -> Iterator[NamespaceHosts]:
    from tests.hosts import Hosts, kill
    from tests.hosts.rabbit import RabbitCluster

    names = [f"r{i}" for i in range(1, NODES + 1)] + ["s3"]
    names += [f"w{i}" for i in range(1, workers + 1)]
    with Hosts(names=names) as hosts:
        store = hosts["s3"]
        weed_dir = store.files / "weed"
        weed_dir.mkdir()
        argv = s3.seaweedfs_command(weed_dir, store.addr, WEED_PORTS, seen_as="/srv/weed")
        log = (weed_dir / "weed.log").open("ab")
        weed = store.popen(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        cluster = RabbitCluster([hosts[f"r{i}"] for i in range(1, NODES + 1)])
        try:
            cluster.start()
            yield NamespaceHosts(hosts, cluster, workers, weed)
        finally:
            cluster.stop()
            kill(weed)


@contextlib.asynccontextmanager
async def open_site(workers: int, loopback: bool) -> AsyncIterator[Site]:
    """The parts for up to ``workers`` worker hosts, up and reachable; torn down after."""
    context: Any
    if loopback:
        context = _loopback()
    else:
        why = hosts_unavailable()
        if why:
            raise RuntimeError(f"namespace hosts: {why} (--loopback runs every part on loopback)")
        context = _namespaces(workers)
    with context as site:
        yield site
