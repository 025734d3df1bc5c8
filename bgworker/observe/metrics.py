"""Prometheus metrics, in two registries: ``WORKER`` (served by a worker on
``BGWORKER_METRICS__HOST``/``PORT``) and ``SERVER`` (the server's ``/metrics``). A process
exposes only its own registry, so the server no longer shows worker series stuck at 0.

Counters, histograms and in-flight jobs are per process. The broker and database gauges
(queue depth, outbox backlog, requests by status) are global facts sampled by every worker
(see ``sampler``): aggregate them with ``max``, not ``sum``.

``serve --workers N`` runs N processes behind one port, and a scrape reaches one of them:
there prometheus-client's multiprocess mode counts them all. The supervisor gives its
children a private directory (``shared_dir``, in ``PROMETHEUS_MULTIPROC_DIR``, read by
prometheus-client when it is imported), each child writes its values to its own files
there, and ``exposition`` sums every process's files. A child that exits keeps its
counters in the total (``process_gone`` drops only its live gauges, hence the gauges'
``multiprocess_mode``), so the total never goes back while the server runs; a new run
starts from an empty directory, which Prometheus sees as one counter reset.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Final

import prometheus_client
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.registry import Collector

# prometheus-client's own variable: set, every value lives in a file of that directory.
MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
# shared_dir's directories: bgworker-metrics-<supervisor pid>-<random>.
_DIR_PREFIX: Final = "bgworker-metrics-"
_DIR_RE: Final = re.compile(rf"{_DIR_PREFIX}(\d+)-")

WORKER: Final = CollectorRegistry()
SERVER: Final = CollectorRegistry()
# `bgworker clean` and `bgworker forget`: one-shot commands, written as a node_exporter
# textfile (`clean --metrics-file`) since no scraper sees a process that exits.
MAINTENANCE: Final = CollectorRegistry()

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
# multiprocess_mode (only read in multiprocess mode): how the processes' values combine;
# "live" leaves out processes that exited.
IN_FLIGHT: Final = Gauge(
    "bgworker_jobs_in_flight",
    "Jobs running in this process",
    ["file_type"],
    registry=WORKER,
    multiprocess_mode="livesum",
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
CANCELS: Final = Counter(
    "bgworker_producer_cancels_total",
    "CancelRequested messages by outcome: applied, before_request, not_cancellable, invalid",
    ["outcome"],
    registry=WORKER,
)
PRUNED: Final = Counter(
    "bgworker_pruned_total",
    "What `bgworker clean` removed under the retention settings, by kind",
    ["kind"],
    registry=MAINTENANCE,
)
ERASED: Final = Counter(
    "bgworker_erased_total",
    "What `bgworker forget` removed, by kind",
    ["kind"],
    registry=MAINTENANCE,
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
    multiprocess_mode="livemin",  # up only if every process reaches it
)

# --- worker: sampled from the broker and the database (sampler) ---------------------------
QUEUE_MESSAGES: Final = Gauge(
    "bgworker_queue_messages",
    "Ready messages in the work queue and the dead-letter queue (passive declare)",
    ["queue"],
    registry=WORKER,
    multiprocess_mode="livemostrecent",  # global facts: the latest sample wins
)
OUTBOX_PENDING: Final = Gauge(
    "bgworker_outbox_pending",
    "Effects not done yet, by kind",
    ["kind"],
    registry=WORKER,
    multiprocess_mode="livemostrecent",
)
OUTBOX_OLDEST_SECONDS: Final = Gauge(
    "bgworker_outbox_oldest_pending_seconds",
    "Age of the oldest effect not done yet (0 when none)",
    registry=WORKER,
    multiprocess_mode="livemostrecent",
)
REQUESTS: Final = Gauge(
    "bgworker_requests",
    "Requests in PostgreSQL by status",
    ["status"],
    registry=WORKER,
    multiprocess_mode="livemostrecent",
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
    multiprocess_mode="livemax",
)

# --- server -------------------------------------------------------------------------------
DOWNLOADS: Final = Counter(
    "bgworker_downloads_total", "Download responses by status", ["status"], registry=SERVER
)
HTTP_REQUESTS: Final = Counter(
    "bgworker_http_requests_total",
    "Requests answered by the server, by route (its pattern), method and status",
    ["route", "method", "status"],
    registry=SERVER,
)
HTTP_IN_FLIGHT: Final = Gauge(
    "bgworker_http_requests_in_flight",
    "Requests the server is answering",
    registry=SERVER,
    multiprocess_mode="livesum",
)


def exposition(registry: CollectorRegistry) -> web.Response:
    """The registry in Prometheus' text format: in multiprocess mode, its series summed over
    every process writing to the directory."""
    collected: CollectorRegistry = registry
    if path := os.environ.get(MULTIPROC_ENV):
        collected = CollectorRegistry(auto_describe=False)
        summed = multiprocess.MultiProcessCollector(None, path)  # type: ignore[no-untyped-call]
        collected.register(_Only(registry, summed))
    return web.Response(
        body=prometheus_client.generate_latest(collected),
        headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST},
    )


class _Only(Collector):
    """The families of ``registry`` out of ``source``: the files hold every metric the
    process defined, the other registry's (stuck at 0) too."""

    def __init__(self, registry: CollectorRegistry, source: Collector) -> None:
        self.names = {family.name for family in registry.collect()}
        self.source = source

    def collect(self) -> Iterable[prometheus_client.Metric]:
        return [family for family in self.source.collect() if family.name in self.names]


@contextlib.contextmanager
def shared_dir() -> Iterator[Path]:
    """A new, empty directory for the processes of one ``serve --workers N`` run, removed
    at the end. One left by a supervisor that was killed outright (its pid is gone, or is
    ours: a container restarted with the same /tmp) is removed first."""
    tmp = Path(tempfile.gettempdir())
    for old in tmp.glob(f"{_DIR_PREFIX}*"):
        match = _DIR_RE.match(old.name)
        if match and (int(match[1]) == os.getpid() or not _alive(int(match[1]))):
            shutil.rmtree(old, ignore_errors=True)
    path = Path(tempfile.mkdtemp(prefix=f"{_DIR_PREFIX}{os.getpid()}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def process_env(path: Path) -> Mapping[str, str]:
    """The environment of a process that writes its values under ``path``."""
    return {**os.environ, MULTIPROC_ENV: str(path)}


def process_gone(pid: int, path: Path) -> None:
    """``pid`` exited: its live gauges leave the sums; its counters and histograms stay."""
    multiprocess.mark_process_dead(pid, str(path))  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's: theirs to clean
        return True
    return True


async def serve(
    registry: CollectorRegistry, host: str, port: int, health: Mapping[str, bool] | None = None
) -> tuple[web.AppRunner, str]:
    """Serve ``registry`` at ``http://host:port/metrics`` on the running loop (port 0: any
    free port), and ``health`` (kept up to date by its owner) at ``/healthz``: 200 while
    every dependency in it is up, else 503 (a readiness probe's answer). Returns the runner
    (``cleanup()`` stops it) and the URL of the metrics actually bound."""

    async def view(request: web.Request) -> web.Response:
        return exposition(registry)

    async def healthz(request: web.Request) -> web.Response:
        checked = dict(health or {})
        up = bool(checked) and all(checked.values())  # nothing checked yet: not ready
        return web.json_response(
            {"status": "ok" if up else "unhealthy", **checked, "pid": os.getpid()},
            status=200 if up else 503,
        )

    app = web.Application()
    app.router.add_get("/metrics", view)
    if health is not None:
        app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_host, bound_port = runner.addresses[0][:2]
    return runner, f"http://{bound_host}:{bound_port}/metrics"
