"""The committed JSON Schemas are exactly what the pydantic models generate."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from bgworker.contract import bundles, events, schedules
from bgworker.messaging import asyncapi

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def test_every_event_has_a_committed_schema_and_nothing_else() -> None:
    # Besides the events' schemas: the AsyncAPI document (tests/unit/test_asyncapi.py).
    # And ScheduleRequested, the body of a schedule (not an AMQP message: test_schedules).
    others = {asyncapi.FILE_NAME, *schedules.json_schemas()}
    committed = sorted(p.name for p in SCHEMAS.glob("*.json") if p.name not in others)
    assert committed == sorted(bundles.json_schemas())
    assert committed == sorted(f"{name}.json" for name in bundles.ALL_EVENT_MODELS)
    assert sorted(asyncapi.schema_files()) == sorted([*committed, *others])


@pytest.mark.parametrize("name", sorted(bundles.json_schemas()))
def test_committed_schema_matches_the_model(name: str) -> None:
    generated = bundles.json_schemas()[name]
    committed = (SCHEMAS / name).read_text(encoding="utf-8")
    assert committed == generated, (
        f"schemas/{name} is out of date: regenerate it with `bgworker schemas export`"
    )


@pytest.mark.parametrize("name", sorted(bundles.json_schemas()))
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
    # Optional (the handler's name fills it): a string or null.
    filename = props["filename"]["anyOf"]
    assert filename[0]["maxLength"] == 255 and filename[1] == {"type": "null"}
    assert "filename" not in schema["required"]


def test_drift_is_detected(monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison above is not vacuous: a model that gains a field no longer matches."""

    class FileRequested(events.FileRequested):
        urgency: int = 0

    monkeypatch.setitem(events.EVENT_MODELS, "FileRequested", FileRequested)
    committed = (SCHEMAS / "FileRequested.json").read_text(encoding="utf-8")
    assert events.json_schemas()["FileRequested.json"] != committed


def _string_properties(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = {}
    objects = {"": schema, "requester.": schema["$defs"]["Requester"]}
    for prefix, obj in objects.items():
        for name, prop in obj["properties"].items():
            variants = prop.get("anyOf", [prop])
            if any(v.get("type") == "string" for v in variants):
                found[prefix + name] = prop
    return found


def test_every_string_field_outside_criteria_refuses_line_breaking_characters() -> None:
    """Cc, U+2028 and U+2029 reach headers: the schema refuses them in every such field."""
    schema = json.loads((SCHEMAS / "FileRequested.json").read_text(encoding="utf-8"))
    fields = _string_properties(schema)
    assert set(fields) >= {"id", "filename", "content_type", "requester.email", "requested_at"}
    for name, prop in fields.items():
        text = json.dumps(prop)
        assert r"[\\x00-\\x1f\\x7f-\\x9f\\u2028\\u2029]" in text, name


def test_every_x_keyword_is_documented_in_the_reference() -> None:
    page = (SCHEMAS.parent / "docs" / "reference.md").read_text(encoding="utf-8")
    section = page.split("## The event contract", 1)[1].split("\n## ", 1)[0]
    keywords = set()
    for name in events.json_schemas():
        keywords |= set(re.findall(r'"(x-bgworker-[a-z-]+)"', events.json_schemas()[name]))
    assert keywords >= {"x-bgworker-max-json-bytes", "x-bgworker-max-depth"}
    for keyword in keywords:
        assert f"`{keyword}`" in section, keyword
