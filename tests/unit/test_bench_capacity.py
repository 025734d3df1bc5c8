"""The scale-out benchmark's arithmetic (bench.cpu, bench.capacity): which part it names as
saturating, and the capacity model's prediction, from readings made up here."""

from __future__ import annotations

from typing import Any

import pytest

from bench import capacity, cpu


def _usage(per_root: dict[str, list[float]], machine_busy: float, seconds: float = 10) -> cpu.Usage:
    spent = {part: sum(v) for part, v in per_root.items()}
    return cpu.Usage(seconds, spent, per_root, machine_busy, nproc=2)


def test_usage_counts_processes_that_appeared_from_zero() -> None:
    before = cpu.Snapshot(0.0, 100.0, {"postgres": {1: 5.0}, "workers": {7: 1.0}})
    after = cpu.Snapshot(10.0, 115.0, {"postgres": {1: 6.0, 2: 0.5}, "workers": {7: 4.0}})
    u = cpu.usage(before, after)
    assert u.cpu == {"postgres": 1.5, "workers": 3.0}
    assert u.machine_cores == 1.5
    assert u.other_cores == pytest.approx(1.05)  # 15 s busy, 4.5 s of it the parts'
    assert u.ms_per_job(1000) == {"postgres": 1.5, "workers": 3.0}


def test_a_worker_loop_at_its_core_is_named_first() -> None:
    u = _usage({"workers": [9.6], "postgres": [2.0], "bench": [0.5]}, machine_busy=12.1)
    assert cpu.bottleneck(u, ["bench"]).startswith("workers: a process at 0.96")


def test_a_busy_machine_names_its_largest_part_leaving_out_the_harness() -> None:
    u = _usage(
        {"workers": [4.0, 4.0], "broker": [3.0], "proxy": [6.0]}, machine_busy=19.0, seconds=10
    )
    said = cpu.bottleneck(u, ["proxy"])
    assert said.startswith("machine CPU (1.90 of 2 cores busy, 0.20 by other jobs)")
    assert said.endswith("largest part: workers 0.80 cores")


def test_an_idle_machine_names_no_part() -> None:
    u = _usage({"workers": [2.0], "broker": [1.0]}, machine_busy=4.0)
    assert cpu.bottleneck(u).startswith("none at its ceiling")


def _run(hosts: int, jobs_per_s: float, other: float, bottleneck: str = "x") -> dict[str, Any]:
    return {
        "hosts": hosts,
        "jobs_per_s": jobs_per_s,
        "seconds": 600 / jobs_per_s,
        "concurrency": 8,
        "nproc": 2,
        "other_cores": other,
        "machine_cores": 2.0,
        "cpu_ms_per_job": {"workers": 8.0, "postgres": 2.0, "broker": 4.0, "s3": 2.0, "bench": 4.0},
        "cores": {},
        "bottleneck": bottleneck,
    }


def test_the_model_scales_one_host_until_the_free_cores_run_out() -> None:
    # 20 ms of CPU a job in all: 2 free cores carry 100 jobs/s, one host did 40.
    m = capacity.model([_run(1, 40, 0.0), _run(2, 80, 0.0), _run(4, 90, 0.2)], ["bench"])
    assert m["jobs_per_core"] == {"workers": 125, "postgres": 500, "broker": 250, "s3": 500}
    checks = {c["hosts"]: c for c in m["checks"]}
    assert checks[2]["predicted"] == 80 and checks[2]["bound"] == "hosts (linear)"
    assert checks[4]["predicted"] == 90 and checks[4]["bound"] == "1.80 free cores"
    d = m["deployment"]
    assert d["jobs_per_s"] == 100 * 2 * 125
    assert d["cores"] == {"postgres": 50.0, "broker": 100.0, "s3": 50.0}
    assert d["pg_connections"] == 100 * 2 * 13


def test_medians_per_host_count_keep_the_median_runs_bottleneck() -> None:
    runs = [_run(1, 40, 0.1, "a"), _run(1, 60, 0.3, "b"), _run(1, 50, 0.2, "c"), _run(2, 70, 0)]
    rows = capacity.medians(runs)
    assert [r["hosts"] for r in rows] == [1, 2]
    assert rows[0]["jobs_per_s"] == 50 and rows[0]["bottleneck"] == "c"
    assert rows[0]["other_cores"] == 0.2
    assert rows[0]["rounds_jobs_per_s"] == [40, 50, 60]
