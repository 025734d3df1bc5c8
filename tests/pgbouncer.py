"""A PgBouncer of the test's own in front of the machine's PostgreSQL: Debian's binary,
started on a free loopback port with its config, auth file, log and pid file in a
temporary directory of its own, and stopped (SIGTERM, then SIGKILL) and the directory
removed on the way out, also when the test fails. The machine's own PgBouncer service, if
any, is never touched.

PgBouncer refuses to run as root: as root it is started with ``-u`` as the ``postgres``
user (or ``nobody``), which owns the directory.

Used by tests/integration/test_pgbouncer.py and bench/pgbouncer.py; the config it writes
is deploy/pgbouncer/pgbouncer.ini's, with the test's addresses, files and pool sizes.
"""

from __future__ import annotations

import configparser
import io
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit, urlunsplit

from bgworker.cli.smtp_sink import free_port

# Debian installs it outside a normal user's PATH.
BINARY: Final = shutil.which("pgbouncer") or (
    "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None
)
MISSING: Final = "pgbouncer is not installed (scripts/test_deps.sh installs Debian's)"


@dataclass(frozen=True)
class PgBouncer:
    host: str
    port: int
    log: Path
    pid: int

    def url(self, dsn: str) -> str:
        """``dsn`` (a database on the machine's PostgreSQL) through this PgBouncer."""
        parts = urlsplit(dsn)
        user = parts.username or "postgres"
        return urlunsplit(parts._replace(netloc=f"{user}@{self.host}:{self.port}"))


EXAMPLE: Final = Path(__file__).resolve().parent.parent / "deploy" / "pgbouncer" / "pgbouncer.ini"


def config(
    *,
    port: int,
    directory: Path,
    server_host: str,
    server_port: int,
    pool_size: int,
    max_client_conn: int,
    pool_mode: str = "transaction",
) -> str:
    """deploy/pgbouncer/pgbouncer.ini with what the test sets (its comments say which)."""
    ini = configparser.ConfigParser(interpolation=None, delimiters=("=",))
    ini.optionxform = str  # type: ignore[assignment,method-assign]  # keep "*" and case
    ini.read_string(EXAMPLE.read_text())
    # Any database name the client asks for, on the one server: each test has its own.
    ini["databases"] = {"*": f"host={server_host} port={server_port}"}
    ini["pgbouncer"].update(
        {
            "listen_addr": "127.0.0.1",
            "listen_port": str(port),
            "unix_socket_dir": "",
            "pool_mode": pool_mode,
            "default_pool_size": str(pool_size),
            "max_db_connections": str(pool_size),
            "max_client_conn": str(max_client_conn),
            # The machine's PostgreSQL trusts loopback; PgBouncer still wants the user listed.
            "auth_type": "trust",
            "auth_file": str(directory / "userlist.txt"),
            "logfile": str(directory / "pgbouncer.log"),
            "pidfile": str(directory / "pgbouncer.pid"),
        }
    )
    out = io.StringIO()
    ini.write(out)
    return out.getvalue()


def _run_as() -> list[str]:
    if os.geteuid() != 0:
        return []
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return ["-u", name]
    raise RuntimeError("pgbouncer cannot run as root and there is no postgres or nobody user")


@contextmanager
def running(
    *,
    server: str,
    pool_size: int = 10,
    max_client_conn: int = 1000,
    pool_mode: str = "transaction",
) -> Iterator[PgBouncer]:
    """A PgBouncer for ``server`` (a PostgreSQL URL: its host and port are used)."""
    assert BINARY is not None, MISSING
    with tempfile.TemporaryDirectory(prefix="bgw-pgbouncer-") as made:
        directory = Path(made)
        user = _run_as()
        if user:
            entry = pwd.getpwnam(user[1])
            os.chown(directory, entry.pw_uid, entry.pw_gid)
        yield from _started(directory, user, server, pool_size, max_client_conn, pool_mode)


def _started(
    directory: Path,
    user: list[str],
    server: str,
    pool_size: int,
    max_client_conn: int,
    pool_mode: str,
) -> Iterator[PgBouncer]:
    assert BINARY is not None, MISSING
    target = urlsplit(server)
    (directory / "userlist.txt").write_text(f'"{target.username or "postgres"}" ""\n')
    port = free_port()
    ini = directory / "pgbouncer.ini"
    ini.write_text(
        config(
            port=port,
            directory=directory,
            server_host=target.hostname or "127.0.0.1",
            server_port=target.port or 5432,
            pool_size=pool_size,
            max_client_conn=max_client_conn,
            pool_mode=pool_mode,
        )
    )
    # Not as a daemon (-d): the process is ours to wait for and to kill.
    process = subprocess.Popen(
        [BINARY, "-q", *user, str(ini)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        _wait_listening(port, process, directory / "pgbouncer.log")
        yield PgBouncer("127.0.0.1", port, directory / "pgbouncer.log", process.pid)
    finally:
        process.send_signal(signal.SIGTERM)  # a fast shutdown: closes every connection
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()


def _wait_listening(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            err = process.stderr.read().decode() if process.stderr else ""
            text = log.read_text() if log.exists() else ""
            raise RuntimeError(f"pgbouncer exited ({process.returncode}): {err}{text}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"pgbouncer did not listen on 127.0.0.1:{port} within 15 s")
