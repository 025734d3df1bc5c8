"""``python -m tests.hosts``: list runs, tear down leftovers, or bring hosts up by hand.

python -m tests.hosts list               # runs, with their owner alive or not
python -m tests.hosts down --all-stale   # tear down runs whose process is gone
python -m tests.hosts down PREFIX...     # tear down these runs, owner alive or not
python -m tests.hosts up 3 [--rabbit]    # hosts (and a cluster) until Ctrl-C
python -m tests.hosts measure            # time 3 hosts + a cluster, RSS per node, restarts
python -m tests.hosts watch PREFIX       # (Hosts starts it) tear down once the owner dies
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from tests.hosts import registry
from tests.hosts.rabbit import RabbitCluster
from tests.hosts.topology import Hosts


def _watch(prefix: str) -> None:
    run = registry.Run(prefix)
    while run.dir.exists():
        if not run.owner_alive():
            run.down()
            return
        time.sleep(0.5)


def _up(n: int, rabbit: bool) -> None:
    with Hosts(n) as hosts:
        for h in hosts:
            print(f"{h.name}\t{h.addr}\tip netns exec {h.ns} ...\tdisk {h.disk}")
        print(f"gw\t{hosts.gw}\t(bridge in {hosts.switch})")
        if rabbit:
            cluster = RabbitCluster(list(hosts)).start()
            print("\n".join(cluster.urls))
        print("Ctrl-C tears it all down", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass


def _rss_mb(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        total += sum(int(line.split()[1]) for line in status.splitlines() if "VmRSS" in line)
    return total // 1024


def _measure() -> None:
    """What docs/hosts.md reports under "Cost"."""
    started = time.monotonic()
    with Hosts(3) as hosts:
        made = time.monotonic()
        cluster = RabbitCluster(list(hosts)).start()
        ready = time.monotonic()
        print(f"3 hosts: {made - started:.2f} s; 3-node cluster ready: {ready - made:.1f} s")
        time.sleep(5)  # past the boot's peak
        for node in cluster.nodes:
            print(f"{node.name}: {_rss_mb(node.host.pids())} MB RSS on its host")
        for what, node, stop in (
            ("graceful stop", cluster[1], cluster[1].stop),
            ("kill -9", cluster[2], cluster[2].kill),
        ):
            t = time.monotonic()
            stop()
            stopped = time.monotonic()
            node.start()
            cluster.wait()
            back = time.monotonic()
            print(f"{what}: {stopped - t:.1f} s, back in the cluster in {back - stopped:.1f} s")
        t = time.monotonic()
    print(f"teardown: {time.monotonic() - t:.2f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.hosts")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list")
    down = sub.add_parser("down")
    down.add_argument("prefixes", nargs="*")
    down.add_argument("--all-stale", action="store_true")
    up = sub.add_parser("up")
    up.add_argument("n", type=int)
    up.add_argument("--rabbit", action="store_true", help="a RabbitMQ node on each host")
    sub.add_parser("watch").add_argument("prefix")
    sub.add_parser("measure")
    args = parser.parse_args(argv)
    if args.command == "list":
        for run in registry.runs():
            state = "owner alive" if run.owner_alive() else "stale"
            print(f"{run.prefix}\t{state}\t{' '.join(run.netns())}")
    elif args.command == "down":
        if args.all_stale:
            for prefix in registry.down_stale():
                print(f"tore down {prefix}")
        for prefix in args.prefixes:
            registry.Run(prefix).down()
            print(f"tore down {prefix}")
    elif args.command == "watch":
        _watch(args.prefix)
    elif args.command == "measure":
        _measure()
    else:
        _up(args.n, args.rabbit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
