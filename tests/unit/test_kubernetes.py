"""deploy/kubernetes/ cannot be applied here (no cluster): it is validated by schema, not
run. The core kinds against the Kubernetes API schemas kubernetes-validate bundles (offline,
strict: an unknown field is an error), KEDA's ScaledObject against
deploy/kubernetes/schemas/keda-scaledobject.schema.json with jsonschema; and the manifests are
kept in step with the settings, the health endpoints, the work queue's name and the
worker's SIGTERM budget."""

from __future__ import annotations

import copy
import inspect
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from aiohttp import web

from bgworker import settings as settings_mod
from bgworker import web as bgweb
from bgworker.messaging import topology
from tests.unit.test_compose import VARIABLE_RE

REPO = Path(__file__).resolve().parents[2]
KUBERNETES = REPO / "deploy" / "kubernetes"
KEDA_SCHEMA = KUBERNETES / "schemas" / "keda-scaledobject.schema.json"
# The oldest and the newest Kubernetes minor the manifests are checked against.
VERSIONS = ("1.29.0", "1.37.0")
Manifest = dict[str, Any]


def _manifests() -> list[Manifest]:
    found = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            assert isinstance(document, dict), path
            found.append(document)
    return found


def _one(kind: str, name: str) -> Manifest:
    [found] = [m for m in _manifests() if m["kind"] == kind and m["metadata"]["name"] == name]
    return found


def _container(deployment: str) -> dict[str, Any]:
    [container] = _one("Deployment", deployment)["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container.get("env", [])}


def _config() -> dict[str, str]:
    data = _one("ConfigMap", "bgworker")["data"]
    assert isinstance(data, dict)
    return data


def _keda_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(KEDA_SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _kubernetes_errors(manifest: Manifest, version: str) -> str | None:
    try:
        kubernetes_validate.validate(manifest, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return str(exc.message)
    return None


def test_the_expected_manifests_are_there() -> None:
    kinds = sorted((m["kind"], m["metadata"]["name"]) for m in _manifests())
    assert kinds == [
        ("ConfigMap", "bgworker"),
        ("Deployment", "bgworker-server"),
        ("Deployment", "bgworker-worker"),
        ("Job", "bgworker-migrate"),
        ("ScaledObject", "bgworker-worker"),
        ("Service", "bgworker-server"),
    ]


@pytest.mark.parametrize("version", VERSIONS)
def test_core_kinds_validate_against_the_kubernetes_schemas(version: str) -> None:
    core = [m for m in _manifests() if not m["apiVersion"].startswith("keda.sh/")]
    assert len(core) == 5
    for manifest in core:
        assert _kubernetes_errors(manifest, version) is None, manifest["metadata"]["name"]


def test_the_scaled_object_validates_against_the_keda_schema() -> None:
    _keda_validator().validate(_one("ScaledObject", "bgworker-worker"))


def _broken_core() -> Iterator[tuple[str, Manifest]]:
    worker = _one("Deployment", "bgworker-worker")
    broken = copy.deepcopy(worker)
    broken["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "9100"
    yield "a port as a string", broken
    broken = copy.deepcopy(worker)
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpPath"] = "/x"
    yield "an unknown probe field", broken
    broken = copy.deepcopy(worker)
    del broken["spec"]["selector"]
    yield "no selector", broken


def _broken_scaled_objects() -> Iterator[tuple[str, Manifest]]:
    scaled = _one("ScaledObject", "bgworker-worker")
    # The trigger's metadata, with one key replaced (None: removed).
    for what, key, value in (
        ("a mode KEDA does not have", "mode", "Length"),
        ("no queue", "queueName", None),
        ("no host at all", "hostFromEnv", None),
        ("a value that is not a number", "value", "eight"),
    ):
        broken = copy.deepcopy(scaled)
        meta = broken["spec"]["triggers"][0]["metadata"]
        if value is None:
            del meta[key]
        else:
            meta[key] = value
        yield what, broken
    broken = copy.deepcopy(scaled)
    broken["spec"]["minReplicaCount"] = -1
    yield "a negative minimum", broken
    broken = copy.deepcopy(scaled)
    broken["spec"]["triggers"] = []
    yield "no trigger", broken
    broken = copy.deepcopy(scaled)
    broken["spec"]["scaleTargetRef"] = {"deployment": "bgworker-worker"}
    yield "a target without a name", broken


def test_the_checks_refuse_broken_manifests() -> None:
    # Not vacuous: each of these mistakes fails its check.
    for what, manifest in _broken_core():
        assert _kubernetes_errors(manifest, VERSIONS[-1]) is not None, what
    validator = _keda_validator()
    for what, manifest in _broken_scaled_objects():
        assert list(validator.iter_errors(manifest)), what


def test_every_bgworker_variable_is_a_real_setting() -> None:
    known = {name for name, _ in settings_mod.env_names()}
    used: set[str] = set(_config())
    for manifest in _manifests():
        text = yaml.safe_dump(manifest)
        used.update(VARIABLE_RE.findall(text))
    assert {"BGWORKER_AMQP_URL", "BGWORKER_DATABASE_URL", "BGWORKER_TOKENS__SECRET_KEYS"} <= used
    assert sorted(used - known) == []


def test_secrets_come_from_the_secret_the_docs_create() -> None:
    docs = (REPO / "docs" / "operating.md").read_text()
    referenced: set[str] = set()
    for deployment in ("bgworker-worker", "bgworker-server"):
        for item in _env(_container(deployment)).values():
            ref = item.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["name"] == "bgworker"
                referenced.add(ref["key"])
    assert {"amqp-url", "database-url", "token-secret-keys"} <= referenced
    for key in referenced:
        assert f"--from-literal={key}=" in docs, key
    # No secret in the ConfigMap (URLs carry passwords).
    secretive = ("SECRET", "PASSWORD", "API_KEYS", "AMQP_URL", "DATABASE_URL")
    assert [name for name in _config() if any(word in name for word in secretive)] == []


def test_the_worker_grace_period_covers_its_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in _config().items():
        monkeypatch.setenv(name, value)
    settings = settings_mod.Settings()
    # What a SIGTERM'd worker may still do (worker/pool.py _shutdown): drain the jobs, then
    # the effects in hand (one SMTP timeout), then the side tasks (outbox interval + 5 s).
    budget = (
        settings.worker.drain_timeout_seconds
        + settings.smtp.timeout_seconds
        + settings.worker.outbox_interval_seconds
        + 5
    )
    spec = _one("Deployment", "bgworker-worker")["spec"]["template"]["spec"]
    assert "BGWORKER_WORKER__DRAIN_TIMEOUT_SECONDS" in _config()  # explicit, not a default
    assert spec["terminationGracePeriodSeconds"] >= budget + 10, budget


def test_the_server_grace_period_covers_its_shutdown() -> None:
    spec = _one("Deployment", "bgworker-server")["spec"]["template"]["spec"]
    [container] = spec["containers"]
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    # bgworker.web.serve's runner.cleanup waits up to aiohttp's shutdown timeout.
    shutdown = inspect.signature(web.BaseRunner.__init__).parameters["shutdown_timeout"].default
    assert spec["terminationGracePeriodSeconds"] >= int(pre_stop[1]) + shutdown + 10


def _probe(container: dict[str, Any], kind: str) -> tuple[str, int]:
    get = container[kind]["httpGet"]
    [port] = [p["containerPort"] for p in container["ports"] if p["name"] == get["port"]]
    return get["path"], port


def test_probes_ask_the_health_endpoints() -> None:
    server = _container("bgworker-server")
    settings = settings_mod.Settings(tokens=settings_mod.TokenSettings(secret_keys=["k"]))
    routes = {r.canonical for r in bgweb.create_app(settings).router.resources()}
    port = int(server["command"][server["command"].index("--port") + 1])
    assert _probe(server, "readinessProbe") == ("/healthz", port)  # checks PostgreSQL
    assert _probe(server, "livenessProbe") == ("/metrics", port)  # no dependency
    assert {"/healthz", "/metrics"} <= routes
    worker = _container("bgworker-worker")
    metrics_port = int(_env(worker)["BGWORKER_METRICS__PORT"]["value"])
    assert _env(worker)["BGWORKER_METRICS__HOST"]["value"] == "0.0.0.0"
    assert _probe(worker, "readinessProbe") == ("/healthz", metrics_port)  # observe.metrics
    assert _probe(worker, "livenessProbe") == ("/metrics", metrics_port)
    assert _probe(worker, "startupProbe") == ("/metrics", metrics_port)
    annotations = _one("Deployment", "bgworker-worker")["spec"]["template"]["metadata"]
    assert annotations["annotations"]["prometheus.io/port"] == str(metrics_port)


def test_keda_scales_the_worker_on_its_work_queue() -> None:
    spec = _one("ScaledObject", "bgworker-worker")["spec"]
    assert spec["scaleTargetRef"]["name"] == "bgworker-worker"
    # Never 0: workers also run the outbox (emails, events), the reaper and recovery.
    assert spec["minReplicaCount"] >= 1
    [trigger] = spec["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "rabbitmq" and meta["mode"] == "QueueLength"
    assert meta["queueName"] == topology.Topology(_config()["BGWORKER_NAMESPACE"]).work_queue
    # The broker URL the worker itself uses, from the Secret.
    assert meta["hostFromEnv"] == "BGWORKER_AMQP_URL"
    assert "secretKeyRef" in _env(_container("bgworker-worker"))["BGWORKER_AMQP_URL"]["valueFrom"]


def test_pods_get_a_writable_tmp_under_a_read_only_root() -> None:
    # serve --workers keeps its metrics files there (observe.metrics.shared_dir).
    for deployment in ("bgworker-worker", "bgworker-server"):
        container = _container(deployment)
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = _one("Deployment", deployment)["spec"]["template"]["spec"]["volumes"]
        assert {"name": mounts["/tmp"], "emptyDir": {}} in volumes
