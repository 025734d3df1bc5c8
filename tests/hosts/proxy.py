"""The handle of a proxy process between namespaces (tests/hosts/relay.py), made by
``Hosts.proxy``, ``Hosts.expose`` and ``Hosts.forward``; its pid is in the run's registry,
so a crashed run's proxies are killed too."""

from __future__ import annotations

import signal
import subprocess
import sys

from tests.hosts import registry
from tests.hosts.procs import REPO, reap


class Proxy:
    """A ``tests.hosts.relay`` process; ``.addr``/``.port`` is where it listens."""

    def __init__(
        self,
        run: registry.Run,
        listen: tuple[str, str, int],
        upstream: tuple[str, str, int],
        delay_ms: float,
    ) -> None:
        self.delay_file = run.dir / f"delay-{id(self)}"
        self.delay_file.write_text(str(delay_ms))
        end = ":".join
        # Its errors go to a file: inheriting the caller's stderr would keep a pipe the
        # caller reads open for as long as the proxy lives (after a crash, until `down`).
        log = (run.dir / f"proxy-{id(self)}.log").open("ab")
        argv = [sys.executable, "-m", "tests.hosts.relay", "--listen", end(map(str, listen))]
        argv += ["--upstream", end(map(str, upstream)), "--delay-ms", str(delay_ms)]
        argv += ["--delay-file", str(self.delay_file)]
        self.proc = subprocess.Popen(
            argv,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        run.add_pid(self.proc.pid)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if not line.startswith("ready "):
            self.proc.kill()
            reap(self.proc)
            raise RuntimeError(f"proxy {listen} -> {upstream} did not start: {line!r}")
        self.addr = listen[1]
        self.port = int(line.split()[1])

    def set_delay(self, delay_ms: float) -> None:
        """Change the latency, also on connections already open."""
        self.delay_file.write_text(str(delay_ms))
        self.proc.send_signal(signal.SIGUSR1)

    def close(self) -> None:
        self.proc.terminate()
        reap(self.proc, 5)
        self.proc.kill()
        self.proc.wait()
