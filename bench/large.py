"""Benchmarks 3 and 4: a 1 GiB file generated and downloaded; ``bgworker serve`` vs nginx.

The worker builds the files (``bench_bytes``) on tmpfs; then four contenders serve the same
files to the same clients (one ``curl`` stream, and ``wrk -c64``): nginx alone (``sendfile
on``, one worker process, started here on a loopback port with its own config); bgworker
offload (``serve`` in accel mode checks the link, the same nginx sends the file:
``bench.offload``); ``bgworker serve`` (token check, PostgreSQL lookup and the bytes, one
process) and ``serve --workers N``; and ``serve`` on S3 (SeaweedFS), streaming or
redirecting (``bench.s3_downloads``). Server CPU comes from /proc/<pid>/stat.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
import asyncpg

from bench import common, offload, s3_downloads, throughput
from bgworker import settings as settings_mod
from bgworker.cli.smtp_sink import free_port
from bgworker.contract import events
from bgworker.links import tokens
from bgworker.messaging import topology

GIB: Final = 1024**3
MIB: Final = 1024**2
SMALL_FILES: Final = 64
_UNITS: Final = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}

NGINX_CONF: Final = """
worker_processes 1;
daemon off;
master_process on;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        location /files/ {{ alias {root}/; }}
    }}
    {include}
}}
"""

WRK_ROTATE: Final = """
local paths = {{ {paths} }}
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", paths[(i % #paths) + 1])
end
"""


@dataclass
class Server:
    name: str
    pids: list[int]  # whose CPU counts
    rss_pid: int  # whose VmHWM is reported (nginx: its worker)
    urls: dict[str, list[str]]  # "1g" | "10m" | "100k" -> URLs
    cost_pids: list[int] = field(default_factory=list)  # offload: the link check's share
    follow: bool = False  # S3 redirect: the client follows the 302 to the object store


def _read_bytes(text: str) -> int:
    match = re.search(r"requests in [\d.]+\w+, ([\d.]+)(\w+) read", text)
    if not match:
        raise ValueError(f"unexpected wrk output:\n{text}")
    return int(float(match[1]) * _UNITS[match[2]])


async def _run(argv: list[str]) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited {proc.returncode}: {out.decode()[-2000:]}")
    return out.decode()


async def curl(server: Server, url: str, times: int) -> dict[str, float]:
    """One curl process, ``times`` transfers in a row on one connection."""
    argv = ["curl", "-sS", "--fail", *(["-L"] if server.follow else [])]
    argv += ["-w", "%{size_download} %{time_total}\\n"]
    for _ in range(times):
        argv += [url, "-o", "/dev/null"]
    cpu0 = common.cpu_seconds(server.pids)
    out = await _run(argv)
    cpu = common.cpu_seconds(server.pids) - cpu0
    pairs = [line.split() for line in out.splitlines() if line.strip()]
    size = sum(int(p[0]) for p in pairs)
    seconds = sum(float(p[1]) for p in pairs)
    return {"mib_per_s": size / MIB / seconds, "cpu_s_per_gib": cpu / (size / GIB)}


async def wrk(server: Server, urls: list[str], seconds: float, tmp: Path) -> dict[str, float]:
    if server.follow:  # wrk cannot follow a redirect to another host
        return await s3_downloads.followed(urls, seconds, server.pids)
    argv = ["wrk", "-t2", "-c64", f"-d{max(1, round(seconds))}s"]
    if len(urls) > 1:
        base = re.match(r"(https?://[^/]+)", urls[0])
        assert base is not None
        paths = ", ".join(f'"{u[len(base[1]) :]}"' for u in urls)
        script = tmp / f"rotate-{server.name}.lua"
        script.write_text(WRK_ROTATE.format(paths=paths))
        argv += ["-s", str(script), base[1] + "/"]
    else:
        argv.append(urls[0])
    cpu0, cost0 = common.cpu_seconds(server.pids), common.cpu_seconds(server.cost_pids)
    out = await _run(argv)
    cpu = common.cpu_seconds(server.pids) - cpu0
    cost = common.cpu_seconds(server.cost_pids) - cost0
    size = _read_bytes(out)
    req = re.search(r"Requests/sec:\s+([\d.]+)", out)
    dur = re.search(r"requests in ([\d.]+)(\w+),", out)
    assert req and dur
    elapsed = float(dur[1]) * (60 if dur[2] == "m" else 0.001 if dur[2] == "ms" else 1)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    if bad or errors:
        common.log(f"wrk {server.name}: {bad[0] if bad else ''} {errors[0] if errors else ''}")
    requests = float(req[1]) * elapsed
    figures = {
        "req_per_s": float(req[1]),
        "mib_per_s": size / MIB / elapsed,
        "cpu_s_per_gib": cpu / (size / GIB) if size else float("nan"),
        "cpu_ms_per_req": cpu * 1000 / requests if requests else float("nan"),
        "non_2xx": float(bad[1]) if bad else 0.0,
    }
    if server.cost_pids:
        figures["cost_cpu_ms_per_req"] = cost * 1000 / requests
    return figures


async def _wait_http(url: str, timeout: float = 30) -> None:
    async with aiohttp.ClientSession() as session, asyncio.timeout(timeout):
        while True:
            try:
                async with session.get(url) as response:
                    if response.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)


async def _generate(
    dsn: str, setup: throughput.Setup, env: dict[str, str], sizes: list[int], reps: int
) -> tuple[dict[str, Any], list[tuple[uuid.UUID, str, int]]]:
    """Build a large file ``reps`` times, then the download set; returns the worker's
    figures and (id, storage key, size) of the kept files."""
    child = common.python_child("large-bgworker", ["bgworker", "worker"], env, setup.logdir)
    connection = await common.amqp_connect("bench-large")
    db = await asyncpg.connect(dsn)
    topo = topology.Topology(setup.namespace)
    gen = {k: common.Series() for k in ("mib_per_s", "publish_to_ready_s")}
    kept: list[tuple[uuid.UUID, str, int]] = []
    try:
        await common.wait_consumers(connection, topo.work_queue, 1)
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)

        async def build(sizes_seeds: list[tuple[int, int]]) -> list[asyncpg.Record]:
            ids = [uuid.uuid4() for _ in sizes_seeds]
            evs = [
                events.FileRequested(
                    id=i,
                    file_type="bench_bytes",
                    criteria={"size": size, "seed": seed},
                    filename=f"bench-{size}-{seed}.bin",
                    content_type="application/octet-stream",
                )
                for i, (size, seed) in zip(ids, sizes_seeds, strict=True)
            ]
            t0 = time.time()
            await common.publish_all(
                channel,
                topo.requests_exchange,
                topology.REQUESTED_KEY,
                [throughput._bgworker_message_for(e) for e in evs],
            )
            async with asyncio.timeout(600):
                while True:
                    child.check_alive()
                    rows = await db.fetch(
                        "SELECT id, status, storage_key, size_bytes, "
                        "extract(epoch FROM started_at) AS s, extract(epoch FROM finished_at) AS f "
                        "FROM bgworker_requests WHERE id = any($1::uuid[])",
                        ids,
                    )
                    if len(rows) == len(ids) and all(r["status"] == "ready" for r in rows):
                        break
                    await asyncio.sleep(0.1)
            by_id = {r["id"]: r for r in rows}
            done: list[asyncpg.Record] = [by_id[i] for i in ids]  # in the order asked
            for r in done:
                r_t0 = t0
                gen_s = float(r["f"]) - float(r["s"])
                if r["size_bytes"] == sizes[0]:
                    gen["mib_per_s"].add(r["size_bytes"] / MIB / gen_s)
                    gen["publish_to_ready_s"].add(float(r["f"]) - r_t0)
            return done

        big: asyncpg.Record | None = None
        for rep in range(reps):
            (row,) = await build([(sizes[0], rep)])
            common.log(
                f"large: {sizes[0] / MIB:.0f} MiB built ({gen['mib_per_s'].values[-1]:.0f} MiB/s)"
            )
            if big is not None:
                (Path(env["BGWORKER_STORAGE_DIR"]) / big["storage_key"]).unlink()
            big = row
        assert big is not None
        kept.append((big["id"], big["storage_key"], big["size_bytes"]))
        rest = await build([(sizes[1], 0)] + [(sizes[2], 100 + i) for i in range(SMALL_FILES)])
        kept += [(r["id"], r["storage_key"], r["size_bytes"]) for r in rest]
        figures = {
            **{k: s.to_json() for k, s in gen.items()},
            "size_bytes": sizes[0],
            "worker_vmhwm_mib": common.mib(common.status_kib(child.pid, "VmHWM")),
        }
    finally:
        await db.close()
        await connection.close()
        await child.stop()
    return figures, kept


def _compare(by_server: dict[str, dict[str, common.Series]]) -> dict[str, Any]:
    """Each contender's figures, and its ratios to nginx alone."""
    row = {srv: {k: v.to_json() for k, v in m.items()} for srv, m in by_server.items()}
    n = by_server["nginx"]
    ratios: dict[str, dict[str, float]] = {}  # contender -> figure -> contender/nginx
    for srv, b in by_server.items():
        if srv == "nginx":
            continue
        r = ratios[srv] = {"throughput": b["mib_per_s"].median / n["mib_per_s"].median}
        if n["cpu_s_per_gib"].median > 0:
            r["cpu per GiB"] = b["cpu_s_per_gib"].median / n["cpu_s_per_gib"].median
        if "req_per_s" in b:
            r["req/s"] = b["req_per_s"].median / n["req_per_s"].median
    return {"servers": row, "ratios": ratios}


def _start_nginx(root: Path, tmp: Path, port: int, logdir: Path, include: str) -> common.Child:
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, port=port, root=root, include=include))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    argv = [nginx, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "error.log")]
    return common.Child("nginx", argv, common.child_env({}), logdir)


async def run(
    dsn: str, storage: Path, size: int, reps: int, wrk_seconds: float, logdir: Path
) -> dict[str, Any]:
    setup = throughput.Setup(dsn, f"bgw_bench_{uuid.uuid4().hex[:8]}", logdir)
    await throughput.declare(setup)
    await common.reset_tables(dsn)
    key = secrets.token_urlsafe(24)
    port = free_port()
    env = throughput.bgworker_env(
        setup,
        storage,
        BGWORKER_TOKENS__SECRET_KEYS=key,
        BGWORKER_WEB__PORT=str(port),
        BGWORKER_WEB__PUBLIC_URL=f"http://127.0.0.1:{port}",
    )
    try:
        generated, files = await _generate(dsn, setup, env, [size, 10 * MIB, 100 * 1024], reps)
    finally:
        await throughput.cleanup(setup)
    signer = tokens.Signer(settings_mod.TokenSettings(secret_keys=[key]))
    tmp = Path(tempfile.mkdtemp(prefix="bgw_bench_nginx_"))
    nginx_port, offload_port, accel_port, multi_port = (free_port() for _ in range(4))
    serve = common.python_child("serve", ["bgworker", "serve"], env, logdir)
    accel = offload.start_accel(env, accel_port, logdir)
    multi = offload.start_multi(env, multi_port, logdir)
    include = offload.nginx_include(tmp, storage, accel_port, offload_port)
    nginx = _start_nginx(storage, tmp, nginx_port, logdir, include)
    servers: list[Server] = []
    results: dict[str, dict[str, dict[str, common.Series]]] = {}
    try:
        for p in (port, accel_port, multi_port):
            await _wait_http(f"http://127.0.0.1:{p}/healthz")
        await _wait_http(f"http://127.0.0.1:{nginx_port}/files/")
        await offload.wait_processes(multi)
        nginx_workers = [p for p in common.tree_pids(nginx.pid) if p != nginx.pid]
        groups = {"1g": files[:1], "10m": files[1:2], "100k": files[2:]}

        def links(p: int) -> dict[str, list[str]]:
            return {
                g: [f"http://127.0.0.1:{p}/download/{signer.general(i)}" for i, _, _ in fs]
                for g, fs in groups.items()
            }

        servers = [
            Server(
                "bgworker serve",
                [serve.pid],
                serve.pid,
                links(port),
            ),
            Server(
                "nginx",
                common.tree_pids(nginx.pid),
                nginx_workers[0] if nginx_workers else nginx.pid,
                {
                    g: [f"http://127.0.0.1:{nginx_port}/files/{k}" for _, k, _ in fs]
                    for g, fs in groups.items()
                },
            ),
            Server(
                "bgworker offload",
                [*common.tree_pids(nginx.pid), accel.pid],
                accel.pid,
                links(offload_port),
                cost_pids=[accel.pid],
            ),
            Server(
                f"bgworker serve x{offload.SERVE_PROCESSES}",
                common.tree_pids(multi.pid),
                max(common.tree_pids(multi.pid)),
                links(multi_port),
            ),
        ]
        # The same files in SeaweedFS, behind `serve` on S3 (stream and redirect).
        keys = [k for _, k, _ in files]
        async with s3_downloads.contenders(env, storage, keys, links, logdir) as on_s3:
            servers += [Server(c.name, c.pids, c.rss_pid, c.urls, follow=c.follow) for c in on_s3]
            for rep in range(reps):
                for s in servers:
                    tests = {
                        "curl 1 stream, large file": curl(s, s.urls["1g"][0], 1),
                        "curl 1 stream, 10 MiB x20": curl(s, s.urls["10m"][0], 20),
                        "wrk -c64, 10 MiB": wrk(s, s.urls["10m"], wrk_seconds, tmp),
                        "wrk -c64, 100 KiB x64 files": wrk(s, s.urls["100k"], wrk_seconds, tmp),
                    }
                    for name, coro in tests.items():
                        out = await coro
                        by = results.setdefault(name, {}).setdefault(s.name, {})
                        for k, v in out.items():
                            by.setdefault(k, common.Series()).add(v)
                        common.log(
                            f"download rep {rep + 1}/{reps} {s.name:15} {name:28} "
                            + "  ".join(f"{k}={v:.3g}" for k, v in out.items())
                        )
            rss = {
                s.name: {
                    "vmhwm_mib": common.mib(common.status_kib(s.rss_pid, "VmHWM")),
                    "vmrss_mib": common.mib(common.status_kib(s.rss_pid, "VmRSS")),
                }
                for s in servers
            }
    finally:
        for child in (serve, accel, multi, nginx):
            await child.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    downloads = {name: _compare(by_server) for name, by_server in results.items()}
    cost = offload.token_check_cost(results, "wrk -c64, 100 KiB x64 files")
    return {"generate": generated, "downloads": downloads, "server_rss": rss, "link_check": cost}
