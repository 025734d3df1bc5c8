"""The Celery contender: the same job with psycopg (``celery -A bench.celery_app worker``).

Configured from BENCH_* variables set by the bench: broker, database, storage, queue.
acks_late (ack after the task returns), results ignored, no events/gossip/mingle.
"""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path
from typing import Any, Final

import psycopg
from celery import Celery  # type: ignore[import-untyped]
from celery.worker.consumer.delayed_delivery import (  # type: ignore[import-untyped]
    DelayedDelivery,
)
from kombu.entity import Queue

from bench import workload

TASK_NAME: Final = "bench.make_csv"

app = Celery("bench", broker=os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1//"))
app.conf.update(
    task_acks_late=True,
    task_ignore_result=True,
    task_default_queue=os.environ.get("BENCH_CELERY_QUEUE", "bgw_bench.celery"),
    task_serializer="json",
    accept_content=["json"],
    worker_send_task_events=False,
    worker_enable_remote_control=False,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)

if os.environ.get("BENCH_CELERY_QUEUE_TYPE") == "quorum":
    # Declared with the arguments the bench declared it with (a mismatch is refused). Celery
    # 5.5+ notices the quorum queue and uses per-consumer prefetch (worker_detect_quorum_queues).
    app.conf.task_queues = [
        Queue(app.conf.task_default_queue, queue_arguments={"x-queue-type": "quorum"})  # type: ignore[no-untyped-call]
    ]
    # It would also declare "native delayed delivery": 28 queues and 29 exchanges named
    # celery_delayed_* outside the bench's namespace, left on the broker after the run. The
    # job is never delayed (no countdown, no eta), so that bootstep is left out.
    DelayedDelivery.include_if = lambda self, c: False

_local = threading.local()
_INSERT: Final = workload.psycopg_sql(workload.INSERT_QUEUED)
_RUNNING: Final = workload.psycopg_sql(workload.MARK_RUNNING)
_READY: Final = workload.psycopg_sql(workload.MARK_READY)


def _conn() -> psycopg.Connection[Any]:
    # One connection per worker process (prefork) or per thread (threads pool).
    conn: psycopg.Connection[Any] | None = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = psycopg.connect(os.environ["BENCH_DSN"], autocommit=True)
        _local.conn = conn
    return conn


@app.task(name=TASK_NAME)  # type: ignore[untyped-decorator]
def make_csv(request_id: str, seed: int) -> None:
    rid = uuid.UUID(request_id)
    conn = _conn()
    conn.execute(_INSERT, workload.psycopg_params(rid))
    conn.execute(_RUNNING, workload.psycopg_params(rid))
    key = workload.key_for(rid)
    size, digest = workload.write_atomic(
        Path(os.environ["BENCH_STORAGE"]), key, workload.csv_bytes(seed)
    )
    conn.execute(_READY, workload.psycopg_params(rid, size, digest, key))
