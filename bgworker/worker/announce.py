"""What a worker says when it starts consuming and when it stops: two INFO lines an
operator reads to know what ran, with what, and how it ended (no secret in either)."""

from __future__ import annotations

import logging
import time
from collections import Counter

from bgworker import handlers
from bgworker import settings as settings_mod
from bgworker.messaging import topology
from bgworker.worker import intake

log = logging.getLogger("bgworker.worker.pool")  # the worker's own logger, as before


def started(
    worker_id: str,
    topo: topology.Topology,
    settings: settings_mod.Settings,
    registry: handlers.Registry,
) -> None:
    log.info(
        "worker %s consuming %s (concurrency %d, handlers: %s)",
        worker_id,
        topo.work_queue,
        settings.worker.concurrency,
        ", ".join(registry.file_types),
    )
    # Once it runs (a start that fails says only why): what it runs with, no secret.
    log.info("worker %s settings: %s", worker_id, settings.summary())


def stopped(
    worker_id: str, started_at: float, outcomes: Counter[str], consuming: intake.Intake
) -> None:
    summary = ", ".join(f"{k}={v}" for k, v in sorted(outcomes.items())) or "no jobs"
    flow = ", ".join(f"{k}={v}" for k, v in sorted(consuming.counts.items()))
    log.info(
        "worker %s stopped after %.1fs: %s (deliveries: %s)",
        worker_id,
        time.monotonic() - started_at,
        summary,
        flow or "none",
    )
