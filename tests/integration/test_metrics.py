"""A worker's /metrics: per-type job histograms, queue depth, outbox backlog, requests by
status, with the values the test set up; the server's /metrics has only its own series."""

from __future__ import annotations

import socket

import aiohttp
from prometheus_client import parser

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.contract import events, states
from bgworker.observe import metrics
from tests import helpers

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _closed_port() -> int:
    """A local port nobody listens on: SMTP there is refused, so emails stay pending."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in parser.text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def _scrape(url: str) -> tuple[str, Samples]:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    return text, _parse(text)


def _local(name: str, **labels: str) -> float:
    return metrics.WORKER.get_sample_value(name, labels) or 0.0


async def test_worker_metrics_show_what_the_test_set_up(
    settings: settings_mod.Settings,
    db: store.Store,
    publish: helpers.Publish,
    publish_raw: helpers.PublishRaw,
    start_worker: helpers.StartWorker,
) -> None:
    settings.metrics = settings_mod.MetricsSettings(port=0, interval_seconds=0.2)
    settings.smtp = settings_mod.SmtpSettings(port=_closed_port(), timeout_seconds=2)
    settings.worker.concurrency = 1
    settings.worker.drain_timeout_seconds = 1
    # Counters and histograms are per process and other tests ran jobs: compare deltas.
    before = {
        t: _local("bgworker_job_seconds_count", file_type=t) for t in ("blob", "login_events")
    }
    ready_before = _local("bgworker_jobs_total", file_type="blob", outcome="ready")
    unknown_before = _local("bgworker_jobs_total", file_type="_unknown", outcome="failed")
    w = await start_worker()
    assert w.metrics_url is not None

    ann = events.Requester(email="ann@example.com")
    done = [
        (await publish("blob", {"size": 2048}, requester=ann)).id,
        (await publish("blob", {"size": 4096}, requester=ann)).id,
        (await publish("login_events", {"rows": 5}, requester=ann)).id,
    ]
    await publish_raw(b"not json at all")
    await publish_raw(b'{"schema_version": 1}')
    # A type nobody handles: failed and dead-lettered, counted without its name as a label.
    unknown = await publish("no_such_type_7f3a")
    for request_id in done:
        await helpers.wait_for_status(db, request_id, states.Status.READY)
    await helpers.wait_for_status(db, unknown.id, states.Status.FAILED)
    # One job holds the only slot; the three after it wait in the work queue.
    slow = await publish("slow", {"seconds": 120})
    await helpers.wait_for_status(db, slow.id, states.Status.RUNNING)
    for _ in range(3):
        await publish("blob", {"size": 10})

    async def settled() -> bool:
        _, s = await _scrape(w.metrics_url or "")
        return (
            _value(s, "bgworker_queue_messages", queue="work") == 3
            and _value(s, "bgworker_queue_messages", queue="dead") == 3
            and _value(s, "bgworker_outbox_pending", kind="email_ready") == 3
            and _value(s, "bgworker_outbox_pending", kind="event_ready") == 0
            and _value(s, "bgworker_requests", status="ready") == 3
        )

    await helpers.wait_until(settled, timeout=30)
    text, s = await _scrape(w.metrics_url)

    for file_type, runs in (("blob", 2), ("login_events", 1)):
        count = _value(s, "bgworker_job_seconds_count", file_type=file_type)
        assert count - before[file_type] == runs, file_type
        inf = _value(s, "bgworker_job_seconds_bucket", file_type=file_type, le="+Inf")
        assert inf == count
    ready = _value(s, "bgworker_jobs_total", file_type="blob", outcome="ready")
    assert ready - ready_before == 2
    assert _value(s, "bgworker_jobs_in_flight", file_type="slow") == 1
    assert _value(s, "bgworker_queue_messages", queue="work") == 3
    assert _value(s, "bgworker_queue_messages", queue="dead") == 3
    assert _value(s, "bgworker_outbox_pending", kind="email_ready") == 3
    assert _value(s, "bgworker_outbox_oldest_pending_seconds") > 0
    assert _value(s, "bgworker_requests", status="ready") == 3
    assert _value(s, "bgworker_requests", status="running") == 1
    assert _value(s, "bgworker_requests", status="failed") == 1
    unknown_now = _value(s, "bgworker_jobs_total", file_type="_unknown", outcome="failed")
    assert unknown_now - unknown_before == 1
    assert "no_such_type_7f3a" not in text
    assert _value(s, "bgworker_dead_letters_total", reason="malformed_json") >= 1
    # The server's series are not the worker's.
    assert "bgworker_downloads_total" not in text


async def test_server_metrics_are_the_servers_own(
    start_server: helpers.StartServer,
) -> None:
    base = await start_server()
    text, _ = await _scrape(f"{base}/metrics")
    assert "bgworker_downloads_total" in text
    for worker_only in ("bgworker_jobs_total", "bgworker_job_seconds", "bgworker_queue_messages"):
        assert worker_only not in text, worker_only


async def test_a_worker_answers_its_readiness_probe_next_to_its_metrics(
    settings: settings_mod.Settings, start_worker: helpers.StartWorker
) -> None:
    settings.metrics = settings_mod.MetricsSettings(port=0)
    w = await start_worker()
    assert w.metrics_url is not None
    url = w.metrics_url.removesuffix("/metrics") + "/healthz"

    async def ready() -> bool:
        async with aiohttp.ClientSession() as http, http.get(url) as response:
            return response.status == 200 and (await response.json())["database"] is True

    await helpers.wait_until(ready)


async def test_health_answers_503_until_every_dependency_is_up() -> None:
    health: dict[str, bool] = {}  # as health.Health keeps it: filled in place
    runner, url = await metrics.serve(metrics.WORKER, "127.0.0.1", 0, health)
    url = url.removesuffix("/metrics") + "/healthz"
    try:
        async with aiohttp.ClientSession() as http:
            for state, expected in (
                ({}, 503),  # nothing checked yet
                ({"database": False, "broker": True}, 503),
                ({"database": True, "broker": True}, 200),
            ):
                health.clear()
                health.update(state)
                async with http.get(url) as response:
                    assert response.status == expected, state
                    assert (await response.json()).items() >= state.items()
    finally:
        await runner.cleanup()
