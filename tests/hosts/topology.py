"""Hosts made of Linux network namespaces on one bridge, each with its own address in
198.18.0.0/15 (reserved for benchmarking), hostname, /tmp and files directory: what the
multi-host tests and the bench run bgworker, brokers and proxies on.

The bridge lives in a namespace of its own (``<prefix>sw``), so the hosts can reach each
other and the bridge's address ``gw`` and nothing else: not the root namespace, not the
machine's services, not the internet. Services the machine runs on its loopback
(PostgreSQL, an SMTP sink, S3) are made reachable on ``gw`` by ``Hosts.expose``.

A command on a host runs through ``ip netns exec`` (which also gives it
/etc/netns/<ns>/hosts as /etc/hosts) in a new UTS and mount namespace: hostname set to the
host's name, the host's own directories bind-mounted on /tmp and /srv, and the directories
holding every host's disk hidden, so no host sees another's files.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Final

from tests.hosts import registry
from tests.hosts.procs import REPO, kill, reap, sh
from tests.hosts.proxy import Proxy

FILES: Final = Path("/srv")  # a host's files directory, as its processes see it
GW: Final = 254  # the bridge's own address, last octet


def _kept_in_tmp() -> list[Path]:
    """The checkout and the interpreter's environment where they live under /tmp (a clone
    made there, as a CI runner may): a host's own /tmp would hide them, and with them the
    code every host runs. Outermost paths only."""
    tmp = Path("/tmp")
    paths = sorted({REPO, Path(sys.prefix).resolve()})
    kept: list[Path] = []
    for path in paths:
        if path.is_relative_to(tmp) and path != tmp:
            if not any(path.is_relative_to(k) for k in kept):
                kept.append(path)
    return kept


def _keep_script(kept: Sequence[Path]) -> str:
    # Each kept path is bound onto an empty directory at the same place inside the host's
    # own /tmp ("$1") before that directory goes over /tmp; --rbind carries those binds
    # along. Only this command's mount namespace sees them (ip netns exec makes it private).
    parts = []
    for path in kept:
        inner = '"$1"/' + shlex.quote(str(path.relative_to("/tmp")))
        parts.append(f"mkdir -p {inner}; mount --bind {shlex.quote(str(path))} {inner}; ")
    return "".join(parts)


# The host side of a command: hostname, private /tmp and /srv, the others' disks hidden.
_ENTER: Final = (
    'set -e; hostname "$0"; '
    + _keep_script(_kept_in_tmp())
    + 'mount --rbind "$1" /tmp; mount --bind "$2" /srv; '
    f"mount -t tmpfs -o size=64k,mode=0755 hidden {registry.REGISTRY}; "
    f"mount -t tmpfs -o size=64k,mode=0755 hidden {registry.DISKS}; "
    'shift 2; exec "$@"'
)


def unavailable() -> str | None:
    """Why hosts cannot be made here (a reason to skip), or None."""
    if os.geteuid() != 0:
        return "multi-host tests need root (network namespaces, mounts, nftables)"
    for tool in ("ip", "nft", "unshare"):
        if shutil.which(tool) is None:
            return f"multi-host tests need `{tool}` (iproute2, nftables, util-linux)"
    if not FILES.is_dir():
        return f"multi-host tests mount a host's files directory on {FILES}, which is missing"
    if subprocess.run(["ip", "netns", "list"], capture_output=True).returncode != 0:
        return "`ip netns` does not work here"
    return None


class Host:
    """One host: ``name`` resolves to ``addr`` on every host (and ``gw`` to the bridge)."""

    def __init__(self, hosts: Hosts, index: int, name: str) -> None:
        self.hosts = hosts
        self.index = index
        self.name = name
        self.ns = f"{hosts.prefix}{name}"
        self.addr = f"{hosts.net}.{index}"
        self.port = f"v{index}"  # its end of the veth on the bridge
        self.disk = hosts.run.disks / name  # outside view: tmp/ and files/
        self.tmp = self.disk / "tmp"  # the host's /tmp, seen from the root namespace
        self.files = self.disk / "files"  # the host's /srv, seen from the root namespace
        self._rules: dict[str, tuple[str, str]] = {}

    def __repr__(self) -> str:
        return f"Host({self.name}, {self.addr})"

    def popen(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        clean_env: bool = False,
        cwd: str | Path | None = None,
        stdout: int | IO[Any] | None = None,
        stderr: int | IO[Any] | None = None,
        stdin: int | IO[Any] | None = subprocess.DEVNULL,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` on this host, in its own process group (``kill`` ends it all).
        ``env`` is added to this process's environment (or is all of it with clean_env)."""
        full = dict(env or {}) if clean_env else {**os.environ, **(env or {})}
        full.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin")
        cmd = ["ip", "netns", "exec", self.ns, "unshare", "--uts", "--", "/bin/sh", "-c"]
        cmd += [_ENTER, self.name, str(self.tmp), str(self.files), *argv]
        proc = subprocess.Popen(
            cmd,
            env=full,
            cwd=cwd if cwd is not None else REPO,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
        self.hosts.procs.append(proc)
        return proc

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        clean_env: bool = False,
        timeout: float = 60,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` here to the end; its output as text."""
        proc = self.popen(
            argv, env=env, clean_env=clean_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill(proc)
            raise
        done = subprocess.CompletedProcess(proc.args, proc.returncode, out.decode(), err.decode())
        if check and done.returncode != 0:
            raise RuntimeError(f"on {self.name}: {' '.join(argv)} -> {done.returncode}: {err!r}")
        return done

    def python(self, *args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        """``python args...`` with this checkout's interpreter (its venv), on this host."""
        return self.popen([sys.executable, *args], **kwargs)

    def pids(self) -> list[int]:
        """Every process running on this host (to measure CPU or memory per host)."""
        return registry.netns_pids(self.ns)

    def reaches(self, addr: str, port: int) -> bool:
        """Whether a TCP connection from here to ``addr``:``port`` is made within a second."""
        probe = [sys.executable, "-m", "tests.hosts.probe", "connect", addr, str(port)]
        return self.run(probe, check=False).returncode == 0

    def serve_echo(self, port: int) -> subprocess.Popen[bytes]:
        """A TCP echo server on every address of this host (tests/hosts/probe.py)."""
        proc = self.python("-m", "tests.hosts.probe", "echo", str(port), stdout=subprocess.PIPE)
        assert proc.stdout is not None
        if proc.stdout.readline() != b"ready\n":
            raise RuntimeError(f"echo server on {self.name} did not start")
        return proc

    # The network: a cut link, dropped peers, packet loss.

    def cut(self) -> None:
        """Unplug the host: its port on the bridge goes down. Nothing is refused or reset,
        packets just stop, both ways, as with a pulled cable."""
        sh("ip", "-n", self.hosts.switch, "link", "set", self.port, "down")

    def heal(self) -> None:
        sh("ip", "-n", self.hosts.switch, "link", "set", self.port, "up")

    def cut_from(self, peer: Host | str, port: int | None = None) -> None:
        """Drop everything between this host and ``peer`` (a Host or an address; ``port``:
        only TCP to or from that port of the peer, e.g. only PostgreSQL behind ``gw``)."""
        addr = peer.addr if isinstance(peer, Host) else peer
        out_port = f" tcp dport {port}" if port else ""
        in_port = f" tcp sport {port}" if port else ""
        self._rules[f"cut {addr} {port}"] = (
            f"ip saddr {addr}{in_port} drop",
            f"ip daddr {addr}{out_port} drop",
        )
        self._apply()

    def heal_from(self, peer: Host | str, port: int | None = None) -> None:
        addr = peer.addr if isinstance(peer, Host) else peer
        self._rules.pop(f"cut {addr} {port}", None)
        self._apply()

    def loss(self, percent: float, peer: Host | str | None = None) -> None:
        """Drop ``percent`` % of packets at random each way on the host's link (only those
        to and from ``peer`` if given); 0 ends it."""
        addr = peer.addr if isinstance(peer, Host) else peer
        key = f"loss {addr}"
        if percent <= 0:
            self._rules.pop(key, None)
        else:
            # In hundredths of a percent, so that 0.5% is 0.5%.
            drop = f"numgen random mod 10000 < {round(percent * 100)} drop"
            self._rules[key] = (
                f'iifname "eth0" {f"ip saddr {addr} " if addr else ""}{drop}',
                f'oifname "eth0" {f"ip daddr {addr} " if addr else ""}{drop}',
            )
        self._apply()

    def clear_rules(self) -> None:
        self._rules.clear()
        self._apply()

    def _apply(self) -> None:
        """Replace the host's nftables table with the current rules, atomically."""
        ins = "".join(f"  {i}\n" for i, _ in self._rules.values())
        outs = "".join(f"  {o}\n" for _, o in self._rules.values())
        script = (
            "table inet bgw {}\ndelete table inet bgw\n"
            "table inet bgw {\n"
            f" chain in {{ type filter hook input priority 0; policy accept;\n{ins} }}\n"
            f" chain out {{ type filter hook output priority 0; policy accept;\n{outs} }}\n"
            "}\n"
        )
        sh("ip", "netns", "exec", self.ns, "nft", "-f", "-", input=script)


class Hosts:
    """``with Hosts(3) as hosts:`` makes hosts h1..h3 (or ``names``), torn down on exit.

    Leftovers of runs whose process died are torn down first."""

    def __init__(
        self, n: int = 3, names: Sequence[str] | None = None, *, watchdog: bool = True
    ) -> None:
        self.names = list(names) if names is not None else [f"h{i}" for i in range(1, n + 1)]
        if len(self.names) > 200 or len(set(self.names)) != len(self.names):
            raise ValueError(f"host names must be distinct, at most 200: {self.names}")
        self.prefix = f"bgw{os.getpid()}x{time.monotonic_ns() % 10000}"
        # Each run's bridge is in its own namespace, so runs may share a subnet; the third
        # octet differs anyway, so that two runs are told apart in a capture.
        self.net = f"198.18.{os.getpid() % 250 + 1}"
        self.gw = f"{self.net}.{GW}"
        self.switch = f"{self.prefix}sw"
        self.run = registry.Run(self.prefix)
        self.hosts: list[Host] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self._proxies: list[Proxy] = []
        self.watchdog = watchdog
        self._watchdog: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Hosts:
        if (reason := unavailable()) is not None:
            raise RuntimeError(reason)
        registry.down_stale()
        self.run.create()
        if self.watchdog:
            # Tears the run down within a second of this process dying, however it dies
            # (without it, the next run's start or `down --all-stale` does).
            self._watchdog = subprocess.Popen(
                [sys.executable, "-m", "tests.hosts", "watch", self.prefix],
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            self._make()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def __getitem__(self, key: int | str) -> Host:
        if isinstance(key, int):
            return self.hosts[key]
        return next(h for h in self.hosts if h.name == key)

    def __iter__(self) -> Iterator[Host]:
        return iter(self.hosts)

    def __len__(self) -> int:
        return len(self.hosts)

    def _netns(self, name: str) -> None:
        self.run.add_netns(name)  # written down first: a crash from here on is cleaned up
        sh("ip", "netns", "add", name)
        # IPv4 in 198.18.0.0/15 only: no IPv6 link-local chatter on the bridge either.
        disable = "net.ipv6.conf.{}.disable_ipv6=1"
        sh("ip", "netns", "exec", name, "sysctl", "-qw", disable.format("all"))
        sh("ip", "netns", "exec", name, "sysctl", "-qw", disable.format("default"))
        sh("ip", "-n", name, "link", "set", "lo", "up")

    def _make(self) -> None:
        self._netns(self.switch)
        sw = ("ip", "-n", self.switch)
        sh(*sw, "link", "add", "br0", "type", "bridge")
        sh(*sw, "addr", "add", f"{self.gw}/24", "dev", "br0")
        sh(*sw, "link", "set", "br0", "up")
        self.hosts = [Host(self, i, name) for i, name in enumerate(self.names, start=1)]
        names = "".join(f"{h.addr} {h.name}\n" for h in self.hosts)
        etc_hosts = f"127.0.0.1 localhost\n{self.gw} gw\n{names}"
        for h in self.hosts:
            self._netns(h.ns)
            etc = registry.NETNS_ETC / h.ns
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text(etc_hosts)
            (etc / "resolv.conf").write_text("")  # no DNS server: no queries leave
            h.tmp.mkdir(parents=True)
            h.tmp.chmod(0o1777)
            h.files.mkdir(parents=True)
            sh(*sw, "link", "add", h.port, "type", "veth", "peer", "name", "eth0", "netns", h.ns)
            sh(*sw, "link", "set", h.port, "master", "br0", "up")
            sh("ip", "-n", h.ns, "addr", "add", f"{h.addr}/24", "dev", "eth0")
            sh("ip", "-n", h.ns, "link", "set", "eth0", "up")

    # Services between the root namespace and the hosts.

    def proxy(
        self,
        listen: tuple[str, str, int],
        upstream: tuple[str, str, int],
        delay_ms: float = 0,
    ) -> Proxy:
        """A proxy process listening at ``listen`` (namespace, address, port; namespace ""
        is the root one, port 0 a free one) and connecting to ``upstream``."""
        p = Proxy(self.run, listen, upstream, delay_ms)
        self._proxies.append(p)
        return p

    def expose(self, port: int, *, listen_port: int | None = None, delay_ms: float = 0) -> Proxy:
        """Make the root namespace's 127.0.0.1:``port`` reachable from every host at
        ``gw``:``listen_port`` (default: the same port), e.g. PostgreSQL; ``delay_ms`` adds
        latency each way."""
        listen = (self.switch, self.gw, listen_port if listen_port is not None else port)
        return self.proxy(listen, ("", "127.0.0.1", port), delay_ms)

    def forward(self, host: Host, port: int, delay_ms: float = 0) -> Proxy:
        """Make ``host``'s ``port`` reachable from the root namespace at 127.0.0.1 on a free
        port (``.port``), e.g. for the test process to reach a broker node."""
        return self.proxy(("", "127.0.0.1", 0), (host.ns, host.addr, port), delay_ms)

    def down(self) -> None:
        """Tear everything down (also what the run registered but did not finish making)."""
        self.run.down()
        for proc in self.procs + [p.proc for p in self._proxies]:
            reap(proc, 5)  # every one of them was killed
        if self._watchdog is not None:
            reap(self._watchdog, 5)  # it sees the run gone within half a second
            self._watchdog.kill()
            reap(self._watchdog)
            self._watchdog = None
