"""The results as a text table, with the issue's goals checked against the ratios."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

from bench import capacity


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _fig(s: dict[str, Any] | None, fmt: str = ".0f") -> str:
    if not s or s.get("median") is None:
        return "-"
    med, lo, hi = s["median"], s["min"], s["max"]
    if len(s.get("runs", [])) <= 1:
        return f"{med:{fmt}}"
    return f"{med:{fmt}} [{lo:{fmt}}-{hi:{fmt}}]"


def _goal(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _rows(title: str, header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    out = [f"\n{title}", "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)), line]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return out


# Per job, in ms of CPU: the worker's processes, RabbitMQ (shared with the machine),
# the PostgreSQL backends of the bench database, their sum; commits: transactions committed.
CPU_COLUMNS: Final = {
    "worker_cpu_ms_per_job": "worker ms",
    "broker_cpu_ms_per_job": "broker ms",
    "pg_cpu_ms_per_job": "PG ms",
    "total_cpu_ms_per_job": "total CPU ms/job",
    "pg_commits_per_job": "PG commits/job",
    # From a counting trial of its own (bench.trips): Sync + Query messages; AMQP methods.
    "pg_round_trips_per_job": "PG round trips/job",
    "amqp_methods_per_job": "AMQP methods/job",
    "publish_seconds": "publish s",
}


# The contender at bgworker's default settings (concurrency 16 since issue 22).
DEFAULT_CONTENDER: Final = "bgworker x1 -c16"


def _throughput_goals(where: str, data: dict[str, Any]) -> list[list[str]]:
    """Issue 22's goals; the baseline (bgworker@REV) is the "before", not a contender."""
    r, rows = data["ratios"], data["contenders"]
    goals = []
    best = max(
        (v for k, v in r.items() if k.endswith("best celery") and "@" not in k), default=None
    )
    if best is not None:
        goals.append(
            [
                f"throughput {where}: best bgworker / best Celery >= 1.0 (stretch 1.3)",
                f"{best:.2f}",
                _goal(best >= 1.0) + (" (stretch met)" if best >= 1.3 else ""),
            ]
        )
    x1 = r.get(f"{DEFAULT_CONTENDER} / floor")
    if x1 is not None:
        goals.append(
            [f"throughput {where}: default bgworker / floor >= 1.0", f"{x1:.2f}", _goal(x1 >= 1.0)]
        )

    def cpu(name: str) -> float | None:
        fig = rows.get(name, {}).get("total_cpu_ms_per_job") or {}
        value: float | None = fig.get("median")
        return value

    celery = [v for k in rows if k.startswith("celery") and (v := cpu(k)) is not None]
    ours = cpu(DEFAULT_CONTENDER)
    if celery and ours is not None:
        goals.append(
            [
                f"throughput {where}: default bgworker total CPU/job <= Celery's lowest",
                f"{ours:.2f} vs {min(celery):.2f} ms",
                _goal(ours <= min(celery)),
            ]
        )
    return goals


def table(result: dict[str, Any]) -> str:
    m = result.get("machine", {})
    lines = [
        f"bgworker benchmarks ({result.get('mode')}, {result.get('started')}): "
        f"{m.get('nproc')} CPUs, {m.get('memory_gib')} GiB, Linux {m.get('kernel')}, "
        f"Python {m.get('python')}, RabbitMQ {m.get('rabbitmq')}, PostgreSQL {m.get('postgresql')}",
        "figures: median [min-max] over the repetitions",
    ]
    goals: list[list[str]] = []
    if "throughput" in result:
        tp = result["throughput"]
        for where, data in tp["storage"].items():
            rows = [
                [name, _fig(c["msg_per_s"])] + [_fig(c.get(k), ".2f") for k in CPU_COLUMNS]
                for name, c in data["contenders"].items()
            ]
            blank = [""] * len(CPU_COLUMNS)
            rows += [[f"ratio {k}", f"{v:.2f}", *blank] for k, v in data["ratios"].items()]
            lines += _rows(
                f"1. small files ({tp['requests']} x 10 KiB CSV, storage {where})",
                ["contender", "msg/s", *CPU_COLUMNS.values()],
                rows,
            )
            goals += _throughput_goals(where, data)
    if "latency" in result:
        lat = result["latency"]
        rows = [[f"publish -> ready {q}", _fig(s, ".1f")] for q, s in lat["ready_ms"].items()]
        rows += [[f"publish -> email {q}", _fig(s, ".1f")] for q, s in lat["email_ms"].items()]
        claims = lat.get("claim_ms", {}).items()
        rows += [[f"publish -> claimed {q}", _fig(s, ".1f")] for q, s in claims]
        if "worker_cpu_ms_per_job" in lat:
            rows.append(["worker CPU per job", _fig(lat["worker_cpu_ms_per_job"], ".2f")])
        lines += _rows(
            f"2. latency at {lat['offered_rate']:.0f} req/s offered, tmpfs "
            f"({lat['requests_per_run']} requests per run)",
            ["figure", "ms"],
            rows,
        )
        p99 = lat["ready_ms"]["p99"]["median"]
        goals.append(["latency publish -> ready p99 < 20 ms", f"{p99:.1f} ms", _goal(p99 < 20)])
    if "large" in result:
        lg = result["large"]
        gen = lg["generate"]
        rss = lg["server_rss"]
        rows = [
            ["generate: worker throughput MiB/s", _fig(gen["mib_per_s"])],
            ["generate: publish -> ready s", _fig(gen["publish_to_ready_s"], ".2f")],
            ["worker VmHWM MiB", f"{gen['worker_vmhwm_mib']:.0f}"],
        ]
        rows += [[f"{srv} VmHWM MiB", f"{v['vmhwm_mib']:.0f}"] for srv, v in rss.items()]
        lines += _rows(
            f"3. large file ({gen['size_bytes'] / 1024**2:.0f} MiB, tmpfs)",
            ["figure", "value"],
            rows,
        )
        peak = max([gen["worker_vmhwm_mib"]] + [v["vmhwm_mib"] for v in rss.values()])
        goals.append(
            ["large file: every process VmHWM < 100 MiB", f"{peak:.0f} MiB", _goal(peak < 100)]
        )
        lines += _downloads(lg, goals)
    if "scaleout" in result:
        lines.append(capacity.table(result["scaleout"]))
    if goals:
        lines += _rows("goals (issues 5 and 22)", ["goal", "measured", "status"], goals)
    return "\n".join(lines)


def _downloads(lg: dict[str, Any], goals: list[list[str]]) -> list[str]:
    """Section 4: every contender per test, its ratios to nginx, the link check's cost."""
    lines: list[str] = []
    rows = []
    for test, d in lg["downloads"].items():
        for srv, s in d["servers"].items():
            rows.append(
                [
                    test,
                    srv,
                    _fig(s["mib_per_s"]),
                    _fig(s.get("req_per_s")),
                    _fig(s["cpu_s_per_gib"], ".2f"),
                ]
            )
        for srv, ratio in d["ratios"].items():
            rows.append(
                [
                    test,
                    f"ratio {srv}/nginx",
                    f"{ratio['throughput']:.2f}",
                    f"{ratio['req/s']:.2f}" if "req/s" in ratio else "",
                    f"{ratio['cpu per GiB']:.2f}" if "cpu per GiB" in ratio else "",
                ]
            )
        # Issue 5: serve alone against nginx; issue 10: offload >= 0.9x nginx, large files.
        one = d["ratios"].get("bgworker serve", {})
        if "throughput" in one:
            t = one["throughput"]
            goals.append(
                [f"download {test}: throughput >= 0.9x nginx", f"{t:.2f}", _goal(t >= 0.9)]
            )
        if "cpu per GiB" in one:
            c = one["cpu per GiB"]
            goals.append([f"download {test}: CPU/GiB <= 1.3x nginx", f"{c:.2f}", _goal(c <= 1.3)])

        off = d["ratios"].get("bgworker offload")
        if off is not None and "100 KiB" not in test:
            t = off["throughput"]
            goals.append([f"download {test}: offload >= 0.9x nginx", f"{t:.2f}", _goal(t >= 0.9)])
    lines += _rows(
        "4. downloads (server side; same client for all, but S3 redirect's wrk rows are "
        "curl --parallel -L: wrk cannot follow a 302 to another host)",
        ["test", "server", "MiB/s", "req/s", "server CPU s/GiB"],
        rows,
    )
    cost = lg.get("link_check") or {}
    if cost:
        lines += _rows(
            "4b. 100 KiB through nginx: what bgworker's link check adds per request",
            ["figure", "value"],
            [
                ["serve (accel) CPU ms/request", f"{cost['serve_cpu_ms']:.3f}"],
                ["offload - nginx CPU ms/request", f"{cost['added_cpu_ms']:.3f}"],
                ["req/s offload / nginx", f"{cost['req_per_s_ratio']:.2f}"],
            ],
        )
    return lines
