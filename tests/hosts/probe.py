"""Small network probes to run on a host (``host.python("-m", "tests.hosts.probe", ...)``):

connect ADDR PORT        exit 0 if a TCP connection is made within a second, else 1
wait-port ADDR PORT S    exit 0 once a TCP connection is made, 1 after S seconds without
echo PORT                a TCP echo server on every address; prints "ready" once listening
udp-count PORT SECONDS   counts UDP datagrams arriving for SECONDS; prints the count
udp-send ADDR PORT N     sends N datagrams, a millisecond apart
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time


def _echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)


def main(argv: list[str]) -> int:
    command, *args = argv
    if command in ("connect", "wait-port"):
        deadline = time.monotonic() + (float(args[2]) if command == "wait-port" else 0)
        while True:  # at least one try
            try:
                socket.create_connection((args[0], int(args[1])), timeout=1).close()
                return 0
            except OSError:
                if time.monotonic() >= deadline:
                    return 1
                time.sleep(0.1)
    if command == "echo":
        server = socket.create_server(("0.0.0.0", int(args[0])), reuse_port=True)
        print("ready", flush=True)
        while True:
            conn, _ = server.accept()
            threading.Thread(target=_echo, args=(conn,), daemon=True).start()
    if command == "udp-count":
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("0.0.0.0", int(args[0])))
        print("ready", flush=True)
        deadline = time.monotonic() + float(args[1])
        count = 0
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                sock.recv(64)
            except TimeoutError:
                break
            count += 1
        print(count)
        return 0
    if command == "udp-send":
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for _ in range(int(args[2])):
            # A datagram dropped on the way out (nftables) fails with EPERM: it is lost.
            with contextlib.suppress(PermissionError):
                sock.sendto(b"x", (args[0], int(args[1])))
            time.sleep(0.001)
        return 0
    raise SystemExit(f"unknown probe {command}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
