"""The download contenders beyond one ``serve`` and plain nginx (issue 10): ``serve`` in
``accel`` mode behind nginx running the shipped ``deploy/nginx/bgworker.conf`` (the same
rendering the tests use), and ``serve --workers N``.

The offloaded nginx is the same nginx master as the plain one (one more ``server`` block
from the include, same worker process), so both are measured with the same build, the same
``worker_processes 1`` and the same sendfile settings; the tests run one at a time, so the
CPU deltas stay per contender.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Final

from bench import common
from tests.integration.nginx import render

# Processes of `serve --workers N` (the box has 2 cores; more only adds switching).
SERVE_PROCESSES: Final = 2


def nginx_include(tmp: Path, storage: Path, serve_port: int, port: int) -> str:
    """The ``include`` line for the bench's nginx.conf: the shipped config in front of the
    accel-mode ``serve`` on ``serve_port``, listening on ``port``."""
    text = render(f"127.0.0.1:{serve_port}", port, "/_bgworker_files/", storage.resolve())
    (tmp / "bgworker.conf").write_text(text)
    return f"include {tmp}/bgworker.conf;"


def start_accel(env: dict[str, str], port: int, logdir: Path) -> common.Child:
    accel = {**env, "BGWORKER_WEB__DOWNLOAD_MODE": "accel", "BGWORKER_WEB__PORT": str(port)}
    return common.python_child("serve-accel", ["bgworker", "serve"], accel, logdir)


def start_multi(env: dict[str, str], port: int, logdir: Path) -> common.Child:
    multi = {**env, "BGWORKER_WEB__PORT": str(port)}
    argv = ["bgworker", "serve", "--workers", str(SERVE_PROCESSES)]
    return common.python_child("serve-multi", argv, multi, logdir)


async def wait_processes(multi: common.Child, timeout: float = 30) -> None:
    """Until every process of ``serve --workers N`` runs (their CPU is counted by pid)."""
    for _ in range(int(timeout * 10)):
        if len(common.tree_pids(multi.pid)) > SERVE_PROCESSES:
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"serve --workers {SERVE_PROCESSES}: not every process started")


def token_check_cost(
    results: dict[str, dict[str, dict[str, common.Series]]], test: str
) -> dict[str, float]:
    """For the small-file test: what the link check adds per request. ``serve_cpu_ms``:
    CPU of the accel-mode ``serve`` per request (parse, token signature, one row by primary
    key, one stat, headers); ``added_cpu_ms``: offload's whole CPU per request minus plain
    nginx's; ``req_per_s_ratio``: offload / nginx."""
    by = results.get(test, {})
    off, ngx = by.get("bgworker offload"), by.get("nginx")
    if not off or not ngx or "cost_cpu_ms_per_req" not in off:
        return {}
    return {
        "serve_cpu_ms": off["cost_cpu_ms_per_req"].median,
        "added_cpu_ms": off["cpu_ms_per_req"].median - ngx["cpu_ms_per_req"].median,
        "req_per_s_ratio": off["req_per_s"].median / ngx["req_per_s"].median,
    }
