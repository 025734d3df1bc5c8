"""The Prometheus and Grafana files compose.yaml loads: consistent with the compose services,
the worker's metrics port and the series bgworker exports (Docker does not run here)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from bgworker.observe import metrics

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
SERIES_RE = re.compile(r"\bbgworker_[a-z_]+")


def _yaml(path: Path) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text())
    assert isinstance(loaded, dict)
    return loaded


def _exported() -> set[str]:
    """Every sample name the two registries can produce (``_bucket``, ``_count``, ...)."""
    names: set[str] = set()
    for registry in (metrics.WORKER, metrics.SERVER):
        for family in registry.collect():
            names.add(family.name)
            names.update(
                family.name + suffix
                for suffix in ("_total", "_bucket", "_count", "_sum", "_created")
            )
    return names


def test_prometheus_scrapes_every_worker_on_its_metrics_port_and_the_server() -> None:
    services = _yaml(REPO / "compose.yaml")["services"]
    worker_env = services["worker"]["environment"]
    assert worker_env["BGWORKER_METRICS__HOST"] == "0.0.0.0"
    port = int(worker_env["BGWORKER_METRICS__PORT"])
    assert "ports" not in services["worker"]  # replicas: scraped inside the network only
    config = _yaml(DEPLOY / "prometheus" / "prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    [worker_sd] = jobs["bgworker-worker"]["dns_sd_configs"]
    assert worker_sd["names"] == ["worker"] and worker_sd["port"] == port
    [server_targets] = jobs["bgworker-server"]["static_configs"]
    assert server_targets["targets"] == ["server:8080"]
    mounted = " ".join(services["prometheus"]["volumes"])
    assert "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml" in mounted


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard() -> None:
    grafana = _yaml(REPO / "compose.yaml")["services"]["grafana"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in grafana["volumes"])
    for host in mounts:
        assert (REPO / host).is_dir(), host
    provisioning = REPO / "deploy" / "grafana" / "provisioning"
    [source] = _yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    assert source["url"] == "http://prometheus:9090" and source["uid"] == "prometheus"
    [provider] = _yaml(provisioning / "dashboards" / "bgworker.yml")["providers"]
    assert provider["options"]["path"] == mounts["./deploy/grafana/dashboards"]


def test_the_dashboard_queries_only_series_bgworker_exports() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "bgworker.json").read_text())
    exported = _exported()
    queried: set[str] = set()
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):  # a row has none
            assert target["datasource"]["uid"] == "prometheus"
            queried.update(SERIES_RE.findall(target["expr"]))
    assert sorted(queried - exported) == []
    # The list: per-type jobs and durations, in flight, queues, outbox, statuses.
    for wanted in (
        "bgworker_jobs_total",
        "bgworker_job_seconds_bucket",
        "bgworker_jobs_in_flight",
        "bgworker_queue_messages",
        "bgworker_outbox_pending",
        "bgworker_outbox_oldest_pending_seconds",
        "bgworker_requests",
    ):
        assert wanted in queried, wanted


def test_the_dashboard_breaks_figures_down_by_host() -> None:
    # Prometheus' `instance` label names the scraped target (a worker's metrics port, a
    # server whose `serve --workers N` sums its processes, metrics.exposition); without its
    # port it names the host, so two workers on one host add up.
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "bgworker.json").read_text())
    per_host = [p for p in dashboard["panels"] if " by host" in p["title"]]
    series: set[str] = set()
    for panel in per_host:
        [target] = panel["targets"]
        expr = target["expr"]
        assert re.match(r"(sum|min|max) by \(host\b[^)]*\) \(label_replace\(", expr), expr
        assert expr.endswith(', "host", "$1", "instance", "(.*):[0-9]+"))'), expr
        assert "{{host}}" in target["legendFormat"]
        series.update(SERIES_RE.findall(target["expr"]))
    # The worker's jobs and the server's requests, each per host.
    assert {"bgworker_jobs_total", "bgworker_http_requests_total"} <= series
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
