"""Prometheus metrics; each process exposes its own registry (worker: --metrics-port,
server: /metrics)."""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram

JOBS: Final = Counter("bgworker_jobs_total", "Finished job attempts by outcome", ["outcome"])
JOB_SECONDS: Final = Histogram(
    "bgworker_job_seconds",
    "Handler run time",
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 1800, 7200),
)
IN_FLIGHT: Final = Gauge("bgworker_jobs_in_flight", "Jobs running in this process")
DEAD_LETTERS: Final = Counter("bgworker_dead_letters_total", "Messages dead-lettered", ["reason"])
REAPED: Final = Counter("bgworker_leases_reaped_total", "Expired leases requeued")
RECOVERED: Final = Counter(
    "bgworker_requests_recovered_total", "Waiting requests republished after their message was lost"
)
OUTBOX_DONE: Final = Counter("bgworker_outbox_done_total", "Effects performed", ["kind"])
OUTBOX_FAILURES: Final = Counter(
    "bgworker_outbox_failures_total", "Effect attempts failed", ["kind"]
)
DOWNLOADS: Final = Counter("bgworker_downloads_total", "Download responses by status", ["status"])
DEPENDENCY_UP: Final = Gauge(
    "bgworker_dependency_up", "1 when the worker reaches the dependency", ["dependency"]
)
