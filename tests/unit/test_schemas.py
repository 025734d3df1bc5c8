"""The committed JSON Schemas are exactly what the pydantic models generate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bgworker import events

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def test_every_event_has_a_committed_schema_and_nothing_else() -> None:
    committed = sorted(p.name for p in SCHEMAS.glob("*.json"))
    assert committed == sorted(events.json_schemas())
    assert committed == sorted(f"{name}.json" for name in events.EVENT_MODELS)


@pytest.mark.parametrize("name", sorted(events.json_schemas()))
def test_committed_schema_matches_the_model(name: str) -> None:
    generated = events.json_schemas()[name]
    committed = (SCHEMAS / name).read_text(encoding="utf-8")
    assert committed == generated, (
        f"schemas/{name} is out of date: regenerate it with `bgworker schemas export`"
    )


@pytest.mark.parametrize("name", sorted(events.json_schemas()))
def test_committed_schema_is_valid_json_schema_document(name: str) -> None:
    schema = json.loads((SCHEMAS / name).read_text(encoding="utf-8"))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith(f"/{name.removesuffix('.json')}.v{events.SCHEMA_VERSION}.json")
    assert schema["type"] == "object"
    # The strict contract reaches producers in other languages too.
    assert schema["additionalProperties"] is False
    assert "id" in schema["required"]


def test_schema_carries_the_validation_rules() -> None:
    schema = json.loads((SCHEMAS / "FileRequested.json").read_text(encoding="utf-8"))
    props = schema["properties"]
    assert props["file_type"]["pattern"] == events.FILE_TYPE_PATTERN
    assert props["schema_version"]["const"] == events.SCHEMA_VERSION
    assert props["filename"]["maxLength"] == 255


def test_drift_is_detected(monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison above is not vacuous: a model that gains a field no longer matches."""

    class FileRequested(events.FileRequested):
        priority: int = 0

    monkeypatch.setitem(events.EVENT_MODELS, "FileRequested", FileRequested)
    committed = (SCHEMAS / "FileRequested.json").read_text(encoding="utf-8")
    assert events.json_schemas()["FileRequested.json"] != committed
