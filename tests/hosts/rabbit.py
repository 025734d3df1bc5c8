"""A RabbitMQ cluster with one node on each of some hosts (Debian's RabbitMQ, the same
version as the machine's), separate from the machine's own node in every way: its own
config files, environment file, enabled-plugins file, HOME and Erlang cookie, mnesia and log
directories on the host's private disk, node names ``rabbit@<host>``, and an epmd per host.
The scripts under /usr/sbin switch to the machine's user and cookie, so the real ones in
the server's sbin directory are called, always with ``-n`` naming one of these nodes.
"""

from __future__ import annotations

import glob
import json
import secrets
import subprocess
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final

from tests.hosts.procs import kill
from tests.hosts.topology import FILES, Host

AMQP_PORT: Final = 5672


def sbin() -> Path | None:
    """The server's own scripts (not the /usr/sbin wrappers), or None if not installed."""
    found = sorted(glob.glob("/usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin"))
    return Path(found[-1]) if found else None


class Node:
    def __init__(self, host: Host, cluster: RabbitCluster) -> None:
        self.host = host
        self.cluster = cluster
        self.name = f"rabbit@{host.name}"
        self.home = FILES / "rabbitmq"  # as the host sees it
        self.url = f"amqp://guest:guest@{host.addr}:{AMQP_PORT}/"
        self.proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"Node({self.name}, {'running' if self.running else 'stopped'})"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def env(self) -> dict[str, str]:
        home = str(self.home)
        return {
            "HOME": home,  # the CLI reads $HOME/.erlang.cookie
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "PATH": "/usr/bin:/bin:/usr/sbin:/sbin",
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_CONF_ENV_FILE": f"{home}/rabbitmq-env.conf",
            "RABBITMQ_CONFIG_FILE": f"{home}/rabbitmq.conf",
            "RABBITMQ_ADVANCED_CONFIG_FILE": f"{home}/advanced.config",
            "RABBITMQ_ENABLED_PLUGINS_FILE": f"{home}/enabled_plugins",
            "RABBITMQ_MNESIA_BASE": f"{home}/mnesia",
            "RABBITMQ_LOG_BASE": f"{home}/log",
            "RABBITMQ_PID_FILE": f"{home}/rabbit.pid",
        }

    def write_config(self, cookie: str, seed: Node) -> None:
        outside = self.host.files / "rabbitmq"
        (outside / "mnesia").mkdir(parents=True, exist_ok=True)
        (outside / "log").mkdir(exist_ok=True)
        (outside / "rabbitmq-env.conf").write_text("")
        (outside / "enabled_plugins").write_text("[].\n")
        # The first node forms the cluster; the others join it on their first boot (a
        # node that has been in the cluster rejoins it from its mnesia directory).
        peers = (
            ""
            if seed is self
            else (
                "cluster_formation.peer_discovery_backend = classic_config\n"
                f"cluster_formation.classic_config.nodes.1 = {seed.name}\n"
            )
        )
        (outside / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = {AMQP_PORT}\n"
            "loopback_users = none\n"  # guest from the other hosts
            "log.console = false\nlog.file.level = info\n"
            # What RabbitMQ's docs advise for 3 or 5 nodes: after a partition the minority
            # side pauses and rejoins by itself once healed ("ignore", the default, would
            # leave two clusters). Quorum queues elect leaders by Raft either way.
            "cluster_partition_handling = pause_minority\n" + peers + self.cluster.extra_config
        )
        cookie_file = outside / ".erlang.cookie"
        cookie_file.write_text(cookie)
        cookie_file.chmod(0o400)

    def start(self) -> None:
        """Start the node (in the background; ``wait`` waits until it runs)."""
        if self.running:
            return
        bin_dir = sbin()
        assert bin_dir is not None
        log = (self.host.files / "rabbitmq" / "server.out").open("ab")
        self.proc = self.host.popen(
            [str(bin_dir / "rabbitmq-server")],
            env=self.env(),
            clean_env=True,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def ctl(self, *args: str, tool: str = "rabbitmqctl", timeout: float = 60) -> str:
        """A CLI command against this node only (``-n``), with the cluster's cookie."""
        bin_dir = sbin()
        assert bin_dir is not None
        done = self.host.run(
            [str(bin_dir / tool), "-n", self.name, *args],
            env=self.env(),
            clean_env=True,
            timeout=timeout,
        )
        return done.stdout

    def wait(self, timeout: float = 90) -> None:
        """Until the node takes AMQP connections: its listener opens near the end of the
        boot, after it has joined its cluster. Watched from its host by one small probe
        rather than by the CLI (`await_startup` costs seconds of CPU each time)."""
        probe = self.host.python(
            "-m", "tests.hosts.probe", "wait-port", self.host.addr, str(AMQP_PORT), str(timeout)
        )
        try:
            while probe.poll() is None:
                if self.proc is None or self.proc.poll() is not None:
                    log = (self.host.files / "rabbitmq" / "server.out").read_text()[-2000:]
                    raise RuntimeError(f"{self.name} is not running: {log}")
                time.sleep(0.2)
        finally:
            kill(probe)
        if probe.returncode != 0:
            raise TimeoutError(f"{self.name} did not take connections in {timeout} s")

    def kill(self) -> None:
        """kill -9 the node (its epmd lives on, as it would on a real host)."""
        if self.proc is not None:
            kill(self.proc)
            self.proc = None

    def stop(self) -> None:
        """Stop gracefully (rabbitmqctl stop), then wait for the process."""
        if self.running:
            self.ctl("stop", timeout=120)
            assert self.proc is not None
            self.proc.wait(60)
        self.proc = None


class RabbitCluster:
    """``RabbitCluster(hosts).start()``: a node on each host, clustered with the first."""

    def __init__(self, hosts: Sequence[Host], *, extra_config: str = "") -> None:
        """``extra_config``: rabbitmq.conf lines added to every node's (e.g.
        "net_ticktime = 10\n" to notice a cut node sooner than the default 60 s)."""
        self.nodes = [Node(h, self) for h in hosts]
        self.cookie = secrets.token_hex(16)
        self.extra_config = extra_config

    @staticmethod
    def unavailable() -> str | None:
        if sbin() is None:
            return "RabbitMQ server is not installed (/usr/lib/rabbitmq)"
        return None

    def __getitem__(self, i: int) -> Node:
        return self.nodes[i]

    def __len__(self) -> int:
        return len(self.nodes)

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def node_on(self, host: Host | str) -> Node:
        name = host.name if isinstance(host, Host) else host
        return next(n for n in self.nodes if n.host.name == name or n.name == name)

    def start(self, timeout: float = 120) -> RabbitCluster:
        """Boot the first node, then the others at once (they join it); wait for all."""
        seed = self.nodes[0]
        for node in self.nodes:
            node.write_config(self.cookie, seed)
        seed.start()
        seed.wait(timeout)
        for node in self.nodes[1:]:
            node.start()
        self.wait(timeout)
        return self

    def wait(self, timeout: float = 90) -> None:
        """Until every started node runs and sees the others running."""
        up = [n for n in self.nodes if n.proc is not None]
        with ThreadPoolExecutor(len(up) or 1) as pool:
            list(pool.map(lambda n: n.wait(timeout), up))
        deadline = time.monotonic() + timeout
        want = {n.name for n in up}
        while (running := self.running_nodes(up[0])) != want:
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster sees {running}, want {want}")
            time.sleep(0.5)

    def running_nodes(self, via: Node | None = None) -> set[str]:
        via = via or next(n for n in self.nodes if n.running)
        status = json.loads(via.ctl("cluster_status", "--formatter", "json"))
        return set(status["running_nodes"])

    def queues(self, via: Node | None = None, vhost: str = "/") -> list[dict[str, object]]:
        """name, type, leader and members (quorum queues), pid (classic queues: the
        node is in it, "<rabbit@h1.…>") of each queue, asked of ``via`` (a running node)."""
        via = via or next(n for n in self.nodes if n.running)
        out = via.ctl(
            "list_queues",
            "-p",
            vhost,
            "name",
            "type",
            "leader",
            "members",
            "pid",
            "--formatter",
            "json",
        )
        return list(json.loads(out))

    def leader(self, queue: str, vhost: str = "/") -> Node:
        """The node leading quorum queue ``queue`` (or holding classic queue ``queue``)."""
        for q in self.queues(vhost=vhost):
            if q["name"] == queue:
                holder = q.get("leader") or str(q.get("pid", "")).strip("<>").rsplit(".", 3)[0]
                return next(n for n in self.nodes if n.name == holder)
        raise LookupError(queue)

    def wait_leader(self, queue: str, not_on: Node | None = None, timeout: float = 60) -> Node:
        """Until quorum queue ``queue`` has a leader on a running node (other than
        ``not_on``); publishes in between may be nacked while the members elect one."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                node = self.leader(queue)
                if node.running and node is not not_on:
                    return node
            except (LookupError, StopIteration, RuntimeError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"no leader for {queue} in {timeout} s")
            time.sleep(0.2)

    def forget(self, gone: Node) -> None:
        """Remove a stopped node from the cluster for good (forget_cluster_node, asked of a
        running node): the quorum queues drop it from their members."""
        via = next(n for n in self.nodes if n.running and n is not gone)
        via.ctl("forget_cluster_node", gone.name, timeout=120)

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()
