"""Prometheus metrics, in two registries: ``WORKER`` (served by a worker on
``BGWORKER_METRICS__HOST``/``PORT``) and ``SERVER`` (the server's ``/metrics``). A process
exposes only its own registry, so the server no longer shows worker series stuck at 0.

Counters, histograms and in-flight jobs are per process. The broker and database gauges
(queue depth, outbox backlog, requests by status) are global facts sampled by every worker
(see ``sampler``): aggregate them with ``max``, not ``sum``.
"""

from __future__ import annotations

from typing import Final

import prometheus_client
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

WORKER: Final = CollectorRegistry()
SERVER: Final = CollectorRegistry()

# --- worker: jobs ------------------------------------------------------------------------
JOBS: Final = Counter(
    "bgworker_jobs_total",
    "Finished job attempts by file type and outcome",
    ["file_type", "outcome"],
    registry=WORKER,
)
JOB_SECONDS: Final = Histogram(
    "bgworker_job_seconds",
    "Run time of a job attempt (handler and finish) by file type",
    ["file_type"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 1800, 7200),
    registry=WORKER,
)
IN_FLIGHT: Final = Gauge(
    "bgworker_jobs_in_flight", "Jobs running in this process", ["file_type"], registry=WORKER
)
REUSED: Final = Counter(
    "bgworker_requests_reused_total",
    "Requests made ready on the file of an identical request (dedupe), by file type",
    ["file_type"],
    registry=WORKER,
)
DEAD_LETTERS: Final = Counter(
    "bgworker_dead_letters_total", "Messages dead-lettered", ["reason"], registry=WORKER
)
REAPED: Final = Counter("bgworker_leases_reaped_total", "Expired leases requeued", registry=WORKER)
RECOVERED: Final = Counter(
    "bgworker_requests_recovered_total",
    "Waiting requests republished after their message was lost",
    registry=WORKER,
)
PARKED: Final = Counter(
    "bgworker_requests_parked_total",
    "Claims that found their tenant or file type at its cap and parked the request",
    registry=WORKER,
)
WOKEN: Final = Counter(
    "bgworker_requests_woken_total",
    "Parked requests republished once a slot freed",
    registry=WORKER,
)
OVER_QUOTA: Final = Counter(
    "bgworker_requests_over_quota_total",
    "New requests over their tenant's quota, by quota and what was done (wait, fail)",
    ["quota", "action"],
    registry=WORKER,
)
OUTBOX_DONE: Final = Counter(
    "bgworker_outbox_done_total", "Effects performed", ["kind"], registry=WORKER
)
OUTBOX_FAILURES: Final = Counter(
    "bgworker_outbox_failures_total", "Effect attempts failed", ["kind"], registry=WORKER
)
DEPENDENCY_UP: Final = Gauge(
    "bgworker_dependency_up",
    "1 when the worker reaches the dependency",
    ["dependency"],
    registry=WORKER,
)

# --- worker: sampled from the broker and the database (sampler) ---------------------------
QUEUE_MESSAGES: Final = Gauge(
    "bgworker_queue_messages",
    "Ready messages in the work queue and the dead-letter queue (passive declare)",
    ["queue"],
    registry=WORKER,
)
OUTBOX_PENDING: Final = Gauge(
    "bgworker_outbox_pending", "Effects not done yet, by kind", ["kind"], registry=WORKER
)
OUTBOX_OLDEST_SECONDS: Final = Gauge(
    "bgworker_outbox_oldest_pending_seconds",
    "Age of the oldest effect not done yet (0 when none)",
    registry=WORKER,
)
REQUESTS: Final = Gauge(
    "bgworker_requests", "Requests in PostgreSQL by status", ["status"], registry=WORKER
)
# Fair share: the busiest tenants by name, every other one summed under "other", so the
# series stay bounded however many tenants a deployment has (worker.sampler).
TENANT_REQUESTS: Final = Gauge(
    "bgworker_tenant_requests",
    "Requests running (live lease) and parked, for the busiest tenants and 'other'",
    ["tenant", "status"],
    registry=WORKER,
)
TOP_TENANTS: Final = 10
OTHER_TENANTS: Final = "other"
SAMPLED: Final = Gauge(
    "bgworker_gauges_sampled_timestamp_seconds",
    "When the broker and database gauges were last sampled (Unix time)",
    registry=WORKER,
)

# --- server -------------------------------------------------------------------------------
DOWNLOADS: Final = Counter(
    "bgworker_downloads_total", "Download responses by status", ["status"], registry=SERVER
)


def exposition(registry: CollectorRegistry) -> web.Response:
    """The registry in Prometheus' text format."""
    return web.Response(
        body=prometheus_client.generate_latest(registry),
        headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST},
    )


async def serve(registry: CollectorRegistry, host: str, port: int) -> tuple[web.AppRunner, str]:
    """Serve ``registry`` at ``http://host:port/metrics`` on the running loop (port 0: any
    free port). Returns the runner (``cleanup()`` stops it) and the URL actually bound."""

    async def view(request: web.Request) -> web.Response:
        return exposition(registry)

    app = web.Application()
    app.router.add_get("/metrics", view)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_host, bound_port = runner.addresses[0][:2]
    return runner, f"http://{bound_host}:{bound_port}/metrics"
