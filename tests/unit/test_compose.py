"""compose.yaml cannot run here (no Docker), so keep it valid and in step with the settings."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from bgworker import settings as settings_mod

REPO = Path(__file__).resolve().parents[2]
# A setting name, as a key or inside a ${VAR:-default} interpolation.
VARIABLE_RE = re.compile(r"\bBGWORKER_[A-Z0-9_]+")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((REPO / "compose.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    found = compose["services"]
    assert isinstance(found, dict)
    return found


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the KEY=value form
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def test_every_bgworker_variable_is_a_real_setting(services: dict[str, Any]) -> None:
    known = {name for name, _ in settings_mod.env_names()}
    used: set[str] = set()
    for service in services.values():
        for key, value in _environment(service).items():
            used.update(VARIABLE_RE.findall(key))
            used.update(VARIABLE_RE.findall(value))
    assert {"BGWORKER_AMQP_URL", "BGWORKER_DATABASE_URL", "BGWORKER_STORAGE_DIR"} <= used
    assert "BGWORKER_TOKENS__SECRET_KEYS" in used
    assert sorted(used - known) == []


def test_dockerfile_sets_only_real_settings() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert text.startswith("#") and "FROM python:3.12-slim" in text
    known = {name for name, _ in settings_mod.env_names()}
    assert sorted(set(VARIABLE_RE.findall(text)) - known) == []


def test_services_and_images(services: dict[str, Any]) -> None:
    assert {"rabbitmq", "postgres", "mailpit", "migrate", "worker", "server"} <= set(services)
    assert services["rabbitmq"]["image"] == "rabbitmq:4-management"
    assert services["postgres"]["image"].startswith("postgres:16")
    mailpit_ports = " ".join(services["mailpit"]["ports"])
    assert "1025" in mailpit_ports and "8025" in mailpit_ports
    for name in ("migrate", "worker", "server"):
        assert services[name]["build"] == ".", name
    assert services["migrate"]["command"] == ["bgworker", "migrate"]
    assert services["worker"]["command"][:2] == ["bgworker", "worker"]
    serve = ["bgworker", "serve", "--host", "0.0.0.0"]
    assert services["server"]["command"] == serve
    assert services["offload-server"]["command"] == [*serve, "--workers", "2"]
    assert services["seaweedfs"]["image"].startswith("chrislusf/seaweedfs:")
    assert services["nginx"]["image"].startswith("nginx:")


def test_health_checks(services: dict[str, Any]) -> None:
    for name in ("rabbitmq", "postgres", "server"):
        assert services[name].get("healthcheck", {}).get("test"), name
    assert "/healthz" in " ".join(services["server"]["healthcheck"]["test"])


def test_worker_is_scalable(services: dict[str, Any]) -> None:
    worker = services["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker  # fixed host ports would collide between replicas


def test_start_order(services: dict[str, Any]) -> None:
    conditions = {
        name: {dep: spec["condition"] for dep, spec in service.get("depends_on", {}).items()}
        for name, service in services.items()
    }
    assert conditions["migrate"]["postgres"] == "service_healthy"
    for name in ("worker", "server"):
        assert conditions[name]["postgres"] == "service_healthy", name
        assert conditions[name]["migrate"] == "service_completed_successfully", name
    assert conditions["worker"]["rabbitmq"] == "service_healthy"


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> named volume (or host path) of a service's volumes."""
    return {v.split(":")[1]: v.split(":")[0] for v in service.get("volumes", [])}


def test_workers_and_server_share_no_volume_in_the_s3_layout(
    services: dict[str, Any],
) -> None:
    envs = {name: _environment(services[name]) for name in ("worker", "server")}
    for name, env in envs.items():
        assert "volumes" not in services[name], name  # object storage only
        assert env["BGWORKER_STORAGE__BACKEND"] == "s3", name
        assert env["BGWORKER_STORAGE__S3_ENDPOINT_URL"] == "http://seaweedfs:8333", name
    assert (
        envs["worker"]["BGWORKER_STORAGE__S3_BUCKET"]
        == envs["server"]["BGWORKER_STORAGE__S3_BUCKET"]
    )
    # The bucket is made at start, before a worker or the server needs it, with the
    # credentials the object store knows.
    bucket = envs["worker"]["BGWORKER_STORAGE__S3_BUCKET"]
    maker = services["s3-bucket"]
    assert f"--bucket {bucket}" in " ".join(maker["command"])
    for name in ("worker", "server"):
        assert services[name]["depends_on"]["s3-bucket"]["condition"] == (
            "service_completed_successfully"
        )
    identities = json.loads((REPO / "deploy" / "seaweedfs" / "s3.json").read_text())
    [credentials] = identities["identities"][0]["credentials"]
    assert credentials["accessKey"] == envs["worker"]["BGWORKER_STORAGE__S3_ACCESS_KEY_ID"]
    assert credentials["secretKey"] == envs["worker"]["BGWORKER_STORAGE__S3_SECRET_ACCESS_KEY"]
    assert credentials["accessKey"] == maker["environment"]["AWS_ACCESS_KEY_ID"]
    mounted = _mounts(services["seaweedfs"])
    assert mounted["/etc/seaweedfs/s3.json"] == "./deploy/seaweedfs/s3.json"


def test_offload_profile_nginx_serves_the_servers_files(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    names = ("offload-migrate", "offload-worker", "offload-server", "nginx")
    for name in names:
        assert services[name]["profiles"] == ["offload"], name
    worker, server = (_environment(services[n]) for n in ("offload-worker", "offload-server"))
    assert worker["BGWORKER_STORAGE__BACKEND"] == server["BGWORKER_STORAGE__BACKEND"] == "local"
    assert server["BGWORKER_WEB__DOWNLOAD_MODE"] == "accel"
    # Its own database and namespace: the two layouts never take each other's requests.
    default = _environment(services["worker"])
    for key in ("BGWORKER_DATABASE_URL", "BGWORKER_NAMESPACE"):
        assert worker[key] == server[key] != default[key], key
    assert "ports" not in services["offload-server"]  # reached through nginx only

    # One volume under worker, server and nginx, at the path the shipped config aliases.
    storage_dir = server["BGWORKER_STORAGE_DIR"]
    volumes = set()
    for name in ("offload-worker", "offload-server", "nginx"):
        [(path, volume)] = [(p, v) for p, v in _mounts(services[name]).items() if p == "/data"]
        volumes.add(volume)
        assert storage_dir.startswith(path + "/"), name
    assert len(volumes) == 1 and volumes <= set(compose["volumes"])
    nginx_mounts = _mounts(services["nginx"])
    assert nginx_mounts["/etc/nginx/conf.d/default.conf"] == "./deploy/nginx/bgworker.conf"
    conf = (REPO / "deploy" / "nginx" / "bgworker.conf").read_text()
    assert f"alias {storage_dir}/;" in conf
    assert f"location {server['BGWORKER_WEB__ACCEL_PREFIX']} {{" in conf
    assert "server offload-server:8080;" in conf
    listen = re.search(r"listen (\d+);", conf)
    assert listen and any(p.endswith(f":{listen[1]}") for p in services["nginx"]["ports"])
