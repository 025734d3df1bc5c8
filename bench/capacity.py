"""The capacity model of the scale-out benchmark, and its table.

From the per-job CPU of each part measured with the fewest hosts:

- jobs/s one core of a part carries: ``1000 / ms per job``;
- on this machine, ``n`` hosts are predicted to do ``min(n x what one host did, free
  cores x 1000 / total ms per job)``, the free cores being the machine's minus what other
  jobs used during that run (measured): hosts add throughput until the cores run out;
- a deployment of H hosts with W worker processes each, every process at a full core
  (``1000 / worker ms`` jobs/s), needs ``rate x ms / 1000`` cores of each part, and
  ``H x W x (concurrency + 5)`` PostgreSQL connections (docs/operating.md's budget).

The bench's own process and the PostgreSQL proxy (``harness``) use this machine's cores,
so they count in the prediction here, never in the deployment's needs.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from typing import Any, Final

DEPLOYMENT_HOSTS: Final = 100
WORKERS_PER_HOST: Final = 2
CONNECTIONS_PER_WORKER: Final = 5  # + concurrency: pool headroom and the lease keeper


def medians(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per host count: each figure's median over the rounds (per part for the CPU),
    the run with the median jobs/s naming the bottleneck, and every round's jobs/s."""
    out = []
    for hosts in sorted({r["hosts"] for r in runs}):
        mine = sorted((r for r in runs if r["hosts"] == hosts), key=lambda r: r["jobs_per_s"])
        row = dict(mine[(len(mine) - 1) // 2])
        for key in ("jobs_per_s", "seconds", "machine_cores", "other_cores"):
            row[key] = statistics.median(r[key] for r in mine)
        for key in ("cpu_ms_per_job", "cores"):
            row[key] = {p: statistics.median(r[key][p] for r in mine) for p in mine[0][key]}
        row["rounds_jobs_per_s"] = [r["jobs_per_s"] for r in mine]
        out.append(row)
    return out


def model(
    runs: list[dict[str, Any]],
    harness: Iterable[str],
    hosts: int = DEPLOYMENT_HOSTS,
    workers_per_host: int = WORKERS_PER_HOST,
) -> dict[str, Any]:
    skip = set(harness)
    base = min(runs, key=lambda r: r["hosts"])
    ms: dict[str, float] = base["cpu_ms_per_job"]
    total = sum(ms.values())
    per_host = base["jobs_per_s"] / base["hosts"]
    checks = []
    for r in runs:
        free = r["nproc"] - r["other_cores"]
        linear = r["hosts"] * per_host
        machine = free * 1000 / total
        predicted = min(linear, machine)
        checks.append(
            {
                "hosts": r["hosts"],
                "predicted": predicted,
                "measured": r["jobs_per_s"],
                "ratio": r["jobs_per_s"] / predicted,
                "bound": "hosts (linear)" if linear <= machine else f"{free:.2f} free cores",
            }
        )
    parts = {p: v for p, v in ms.items() if p not in skip}
    per_worker = 1000 / parts["workers"]
    rate = hosts * workers_per_host * per_worker
    # The work queue's leader lives on one node: the busiest node's share of the broker's
    # CPU is what one node must carry however many nodes the cluster has.
    nodes = base.get("broker_node_cores") or [1.0]
    busiest = max(nodes) / sum(nodes) if sum(nodes) else 1.0
    return {
        "from_hosts": base["hosts"],
        "ms_per_job": parts,
        "jobs_per_core": {p: 1000 / v for p, v in parts.items() if v > 0},
        "checks": checks,
        "deployment": {
            "hosts": hosts,
            "workers_per_host": workers_per_host,
            "jobs_per_s_per_worker": per_worker,
            "jobs_per_s": rate,
            "cores": {p: rate * v / 1000 for p, v in parts.items() if p != "workers"},
            "busiest_broker_node_share": busiest,
            "busiest_broker_node_cores": rate * parts.get("broker", 0.0) * busiest / 1000,
            "pg_connections": hosts
            * workers_per_host
            * (base["concurrency"] + CONNECTIONS_PER_WORKER),
        },
    }


def _rows(title: str, header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    out = [f"\n{title}", "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return out


def _spread(r: dict[str, Any]) -> str:
    """Median jobs/s, and its range over the rounds when there were several."""
    rounds = r.get("rounds_jobs_per_s", [])
    if len(rounds) < 2:
        return f"{r['jobs_per_s']:.0f}"
    return f"{r['jobs_per_s']:.0f} [{min(rounds):.0f}-{max(rounds):.0f}]"


def table(result: dict[str, Any]) -> str:
    runs = result["medians"]
    first = runs[0]
    parts = list(first["cpu_ms_per_job"])
    rows = []
    for r in runs:
        ms = r["cpu_ms_per_job"]
        rows.append(
            [
                str(r["hosts"]),
                _spread(r),
                f"{r['jobs_per_s'] / first['jobs_per_s']:.2f}",
                *(f"{ms[p]:.2f}" for p in parts),
                f"{sum(ms.values()):.2f}",
                f"{r['machine_cores']:.2f}",
                f"{r['other_cores']:.2f}",
                r["bottleneck"],
            ]
        )
    lines = _rows(
        f"scale-out ({result['site']}; {first['requests']} jobs per run, concurrency "
        f"{first['concurrency']} per worker, medians of {result['reps']} round(s), "
        f"{result['started']}); CPU ms per job",
        [
            "hosts",
            "jobs/s",
            "vs 1st",
            *parts,
            "total",
            "busy cores",
            "other jobs' cores",
            "saturates",
        ],
        rows,
    )
    m = result["model"]
    lines += _rows(
        f"capacity model (per-job costs from {m['from_hosts']} host(s))",
        ["part", "CPU ms/job", "jobs/s per core"],
        [
            [p, f"{v:.2f}", f"{m['jobs_per_core'].get(p, float('inf')):.0f}"]
            for p, v in m["ms_per_job"].items()
        ],
    )
    lines += _rows(
        "predicted (model) vs measured, this machine",
        ["hosts", "predicted jobs/s", "measured", "measured/predicted", "bound by"],
        [
            [
                str(c["hosts"]),
                f"{c['predicted']:.0f}",
                f"{c['measured']:.0f}",
                f"{c['ratio']:.2f}",
                c["bound"],
            ]
            for c in m["checks"]
        ],
    )
    d = m["deployment"]
    busiest = (
        f" (its busiest node {d['busiest_broker_node_cores']:.1f}: "
        f"{d['busiest_broker_node_share']:.0%} of the broker's CPU here)"
    )
    need = ", ".join(
        f"{p} {v:.1f} cores" + (busiest if p == "broker" else "") for p, v in d["cores"].items()
    )
    lines.append(
        f"\n{d['hosts']} hosts x {d['workers_per_host']} workers at a full core "
        f"({d['jobs_per_s_per_worker']:.0f} jobs/s each) = {d['jobs_per_s']:.0f} jobs/s: "
        f"needs {need}; {d['pg_connections']} PostgreSQL connections"
    )
    if "broker_nodes" in result:
        lines.append(
            "broker nodes' cores (each count's median run): "
            + "; ".join(
                f"{r['hosts']} host(s): "
                + ", ".join(
                    f"{name} {v:.2f}"
                    for name, v in zip(result["broker_nodes"], r["broker_node_cores"], strict=False)
                )
                for r in runs
            )
        )
    return "\n".join(lines)
