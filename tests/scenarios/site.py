"""The scenarios' hosts: three RabbitMQ nodes (r1..r3) clustered, three worker hosts
(w1..w3), a server host (srv), each a network namespace with its own address and disk
(tests/hosts). PostgreSQL, SeaweedFS (S3), the SMTP sink and the webhook receiver run on
this machine's loopback and are reached from the hosts at the bridge's address ``gw``
through proxies; the test reaches the broker nodes and the server through proxies the
other way. Shared by a module's scenarios; every link is healed and every node started
again between them.

Each worker host lists the broker nodes starting with its own (w1: r1, r2, r3; w2: r2, r3,
r1; ...): each worker sits on its own node, as in issue 20's finding, and moves on when
that node goes.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Final
from urllib.parse import urlsplit, urlunsplit

from tests import s3
from tests.helpers import PG_ADMIN
from tests.hosts import Hosts, Proxy
from tests.hosts.rabbit import AMQP_PORT, Node, RabbitCluster

BROKERS: Final = ("r1", "r2", "r3")
WORKERS: Final = ("w1", "w2", "w3")
SERVER: Final = "srv"
SERVE_PORT: Final = 8080
PG_PORT: Final = urlsplit(PG_ADMIN).port or 5432
# Where the slow PostgreSQL listens on gw: 100 ms added each way, 200 ms a round trip.
SLOW_PG_PORT: Final = 15432
SLOW_PG_DELAY_MS: Final = 100
# AMQP heartbeat (seconds) of the hosts' connections: a cut-off peer is noticed in two
# missed beats, and the broker hands back what the cut-off consumer held (60 s by default).
HEARTBEAT: Final = 5
BUILDS: Final = "/tmp/scenario-builds"  # + "-<namespace>.jsonl": a host's build record


class Site:
    def __init__(self, hosts: Hosts, cluster: RabbitCluster, s3_server: s3.S3Server) -> None:
        self.hosts = hosts
        self.cluster = cluster
        self.s3 = s3_server
        self.gw = hosts.gw
        self.pg = hosts.expose(PG_PORT)
        self.slow_pg = hosts.expose(PG_PORT, listen_port=SLOW_PG_PORT, delay_ms=SLOW_PG_DELAY_MS)
        s3_port = urlsplit(s3_server.url).port
        assert s3_port is not None
        self.s3_proxy = hosts.expose(s3_port)
        self.s3_port = s3_port
        # The test process's way to each node (a node killed: its proxy refuses).
        self.to_nodes = [hosts.forward(node.host, AMQP_PORT) for node in cluster.nodes]
        self.to_server = hosts.forward(hosts[SERVER], SERVE_PORT)

    @property
    def proxies(self) -> list[Proxy]:
        return [self.pg, self.slow_pg, self.s3_proxy, *self.to_nodes, self.to_server]

    def node_urls(self, first: int) -> str:
        """The cluster's nodes as BGWORKER_AMQP_URL, starting with node ``first``."""
        urls = [f"{url}?heartbeat={HEARTBEAT}" for url in self.cluster.urls]
        return ",".join(urls[first:] + urls[:first])

    @property
    def producer_urls(self) -> str:
        """The nodes as the test process reaches them."""
        return ",".join(f"amqp://guest:guest@127.0.0.1:{p.port}/" for p in self.to_nodes)

    @property
    def server_url(self) -> str:
        return f"http://127.0.0.1:{self.to_server.port}"

    def database_url(self, url: str, port: int = PG_PORT) -> str:
        """A database URL of this machine as the hosts reach it."""
        parts = urlsplit(url)
        auth = parts.netloc.rpartition("@")[0]
        return urlunsplit(parts._replace(netloc=f"{auth}@{self.gw}:{port}"))

    def expose(self, port: int) -> Proxy:
        return self.hosts.expose(port)

    def node(self, name: str) -> Node:
        return self.cluster.node_on(name)

    def holders(self, namespace: str) -> dict[str, str]:
        """Each queue of ``namespace`` and the host of the node leading it (a quorum queue)
        or holding it (a classic queue: the node of its process)."""
        via = next(n for n in self.cluster.nodes if n.running)
        out = via.ctl("list_queues", "name", "leader", "pid", "--formatter", "json")
        queues = [q for q in json.loads(out) if str(q["name"]).startswith(f"{namespace}.")]
        # A pid reads "#PID<N.x.y>", N naming its node for the asking node: a quorum
        # queue's pid is its leader's, which names N.
        nodes = {_pid_node(q["pid"]): str(q["leader"]) for q in queues if q["leader"]}
        return {
            str(q["name"]): (str(q["leader"]) or nodes.get(_pid_node(q["pid"]), "?")).partition(
                "@"
            )[2]
            for q in queues
        }

    def connections_from(self, host: str) -> int:
        """The broker connections the cluster holds open from ``host``'s address."""
        via = next(n for n in self.cluster.nodes if n.running)
        out = via.ctl("list_connections", "peer_host", "--formatter", "json")
        addr = self.hosts[host].addr
        return sum(1 for c in json.loads(out) if _address(c["peer_host"]) == addr)

    def restore(self) -> None:
        """Every link healed, every rule dropped, every node running in the cluster."""
        for host in self.hosts:
            host.heal()
            host.clear_rules()
        down = [n for n in self.cluster.nodes if not n.running]
        for node in down:
            node.start()
        if down:
            self.cluster.wait()


def _address(peer: object) -> str:
    """An address as rabbitmqctl's JSON gives it: an IPv4 address's 4 bytes, or an IPv6
    address's 8 words (an IPv4-mapped one, ::ffff:a.b.c.d, when the node listens on ::)."""
    if isinstance(peer, list) and len(peer) == 8 and peer[:6] == [0, 0, 0, 0, 0, 0xFFFF]:
        peer = [peer[6] >> 8, peer[6] & 0xFF, peer[7] >> 8, peer[7] & 0xFF]
    if isinstance(peer, list) and len(peer) == 4:
        return ".".join(map(str, peer))
    return str(peer)


def _pid_node(pid: object) -> str:
    return str(pid).removeprefix("#PID<").partition(".")[0]


class OnHosts:
    """A ``processes.Placement``: a host's processes run on it, its builds in its /tmp."""

    def __init__(self, hosts: Hosts, namespace: str) -> None:
        self.hosts = hosts
        self.name = f"{BUILDS}-{namespace}.jsonl"  # the site outlives a scenario

    def popen(
        self, host: str, argv: Sequence[str], env: dict[str, str], log: IO[bytes]
    ) -> subprocess.Popen[bytes]:
        return self.hosts[host].popen(
            argv, env=env, clean_env=True, stdout=log, stderr=subprocess.STDOUT
        )

    def builds_inside(self, host: str) -> str:
        return self.name

    def builds_outside(self, host: str) -> Path:
        return self.hosts[host].tmp / Path(self.name).name


@contextlib.contextmanager
def site(workdir: Path) -> Iterator[Site]:
    with (
        s3.seaweedfs(workdir) as s3_server,
        Hosts(names=[*BROKERS, *WORKERS, SERVER]) as hosts,
    ):
        cluster = RabbitCluster([hosts[name] for name in BROKERS])
        made: Site | None = None
        try:
            cluster.start()
            made = Site(hosts, cluster, s3_server)
            yield made
        finally:
            cluster.stop()
            for proxy in made.proxies if made else []:
                close(proxy)


def close(proxy: Proxy) -> None:
    """Stop a proxy process and close the pipe it said "ready" on."""
    proxy.close()
    if proxy.proc.stdout is not None:
        proxy.proc.stdout.close()
