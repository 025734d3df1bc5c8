"""compose.yaml cannot run here (no Docker), so keep it valid and in step with the settings."""

from __future__ import annotations

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
    assert services["server"]["command"] == ["bgworker", "serve", "--host", "0.0.0.0"]


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


def test_worker_and_server_share_the_storage_volume(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    mounts = {}
    for name in ("worker", "server"):
        storage_dir = _environment(services[name])["BGWORKER_STORAGE_DIR"]
        [volume] = [
            v.split(":")[0]
            for v in services[name]["volumes"]
            if storage_dir.startswith(v.split(":")[1])
        ]
        mounts[name] = volume
    assert mounts["worker"] == mounts["server"]
    assert mounts["worker"] in compose["volumes"]  # a named volume, not a host path
