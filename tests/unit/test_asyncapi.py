"""The AsyncAPI 3.0 document (``schemas/asyncapi.json``): committed as generated, naming
what the wire modules name, and valid for the reference parser (npm ``@asyncapi/parser``,
run through node when it is installed)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any, Final

import pytest

from bgworker.contract import bundles
from bgworker.messaging import asyncapi, topology, wire
from tests.helpers import REPO, node_project

SCHEMAS: Final = REPO / "schemas"
PARSER: Final = REPO / "scripts" / "asyncapi"


def committed() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((SCHEMAS / asyncapi.FILE_NAME).read_text())
    return loaded


def test_the_committed_document_is_the_generated_one() -> None:
    assert (SCHEMAS / asyncapi.FILE_NAME).read_text() == asyncapi.text(), (
        "schemas/asyncapi.json is out of date: run `bgworker schemas export`"
    )


def test_it_names_the_topology_and_the_headers_bgworker_uses() -> None:
    doc = committed()
    topo = topology.Topology(asyncapi.DEFAULT_NAMESPACE)
    channels = doc["channels"]
    assert channels["requests"]["address"] == topology.REQUESTED_KEY
    assert channels["requests"]["bindings"]["amqp"]["exchange"]["name"] == topo.requests_exchange
    assert channels["requests"]["bindings"]["amqp"]["exchange"]["type"] == "direct"
    assert channels["fileReady"]["bindings"]["amqp"]["exchange"]["type"] == "topic"
    assert channels["deadLetters"]["bindings"]["amqp"]["queue"]["name"] == topo.dead_queue
    dead_headers = doc["components"]["messages"]["DeadLetter"]["headers"]["properties"]
    assert {wire.REASON, wire.ERROR, wire.ATTEMPTS, wire.FAILED_AT} <= set(dead_headers)
    request_headers = doc["components"]["messages"]["FileRequested"]["headers"]["properties"]
    assert wire.REPLAY in request_headers and wire.TRACEPARENT in request_headers


def test_every_payload_references_a_committed_schema() -> None:
    for message in committed()["components"]["messages"].values():
        ref = message["payload"].get("schema", {}).get("$ref")
        if ref is not None:
            assert (SCHEMAS / ref).is_file(), ref
            assert ref.removeprefix("./").removesuffix(".json") in bundles.ALL_EVENT_MODELS


def parse(folder: Path) -> tuple[int, dict[str, Any]]:
    node_project(PARSER)
    run = subprocess.run(
        ["node", "validate.mjs", str(folder / asyncapi.FILE_NAME)],
        cwd=PARSER,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.stdout, run.stderr
    report: dict[str, Any] = json.loads(run.stdout)
    return run.returncode, report


def test_the_reference_parser_accepts_it_and_resolves_the_payloads() -> None:
    code, report = parse(SCHEMAS)
    assert code == 0 and report["valid"], report
    assert report["errors"] == [] and report["warnings"] == []
    assert sorted(report["messages"]) == sorted(["DeadLetter", *bundles.ALL_EVENT_MODELS])
    # The titles come from the referenced JSON Schema files: the $refs were followed.
    assert set(bundles.ALL_EVENT_MODELS) <= set(report["payloadTitles"])


@pytest.mark.parametrize("breakage", ["unknown action", "binding out of spec"])
def test_the_parser_check_is_not_vacuous(tmp_path: Path, breakage: str) -> None:
    for path in SCHEMAS.glob("*.json"):
        shutil.copy(path, tmp_path / path.name)
    doc = committed()
    if breakage == "unknown action":
        doc["operations"]["sendFileReady"]["action"] = "publish"  # AsyncAPI 2 wording
    else:
        doc["components"]["messages"]["FileReady"]["bindings"]["amqp"]["deliveryMode"] = 2
    (tmp_path / asyncapi.FILE_NAME).write_text(json.dumps(doc))
    code, report = parse(tmp_path)
    assert code == 1 and not report["valid"] and report["errors"], report


def test_export_writes_and_check_finds_a_stale_document(tmp_path: Path) -> None:
    assert sorted(asyncapi.export(tmp_path, check=False)) == sorted(asyncapi.schema_files())
    assert asyncapi.export(tmp_path, check=True) == []
    (tmp_path / asyncapi.FILE_NAME).write_text("{}")
    assert asyncapi.export(tmp_path, check=True) == [asyncapi.FILE_NAME]
    assert (tmp_path / asyncapi.FILE_NAME).read_text() == "{}"  # --check writes nothing
