"""BundleRequested's validation (contract.bundles): whatever the bytes, a bundle or an
InvalidEventError naming the field; an accepted bundle's parts are distinct requests whose
ids are the same on every parse."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bgworker.contract import bundles, events
from bgworker.effects import mail

FILE_TYPES = st.sampled_from(["blob", "report", "a-b_c", "", "Bad Type", "x" * 200, 7, None])
PARTS = st.lists(
    st.fixed_dictionaries(
        {"file_type": FILE_TYPES},
        optional={
            "criteria": st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
            "filename": st.sampled_from(["a.csv", "b.csv", "../x", "", "r\n.csv"]),
            "surprise": st.just(1),
        },
    ),
    max_size=bundles.MAX_PARTS + 3,
)


@given(parts=PARTS, bundle_id=st.uuids())
def test_a_bundle_is_accepted_whole_or_refused_by_field(
    parts: list[dict[str, Any]], bundle_id: uuid.UUID
) -> None:
    body = json.dumps({"id": str(bundle_id), "parts": parts}).encode()
    try:
        bundle = bundles.parse_bundle_requested(body)
    except events.InvalidEventError as exc:
        assert exc.reason == "invalid_schema"
        assert all(where.startswith(("parts", "(body)")) for where, _ in exc.errors)
        return
    assert 1 <= len(bundle.parts) <= bundles.MAX_PARTS
    made = bundle.part_events()
    again = bundles.parse_bundle_requested(body).part_events()
    assert [e.id for e in made] == [e.id for e in again]
    assert len({e.id for e in made}) == len(made)
    assert len(
        {json.dumps(p.model_dump(mode="json"), sort_keys=True) for p in bundle.parts}
    ) == len(made)
    names = [p.filename for p in bundle.parts if p.filename is not None]
    assert len(set(names)) == len(names)


@given(st.binary(max_size=200))
def test_any_bytes_give_a_bundle_or_an_invalid_event(body: bytes) -> None:
    try:
        bundles.parse_bundle_requested(body)
    except events.InvalidEventError:
        pass


@pytest.mark.parametrize("count", [0, bundles.MAX_PARTS + 1])
def test_a_bundle_of_no_parts_or_too_many_is_refused(count: int) -> None:
    parts = [{"file_type": "blob", "criteria": {"i": i}} for i in range(count)]
    body = json.dumps({"id": str(uuid.uuid4()), "parts": parts}).encode()
    with pytest.raises(events.InvalidEventError, match="parts"):
        bundles.parse_bundle_requested(body)


def test_part_ids_are_uuid5_of_the_bundle_and_the_index() -> None:
    bundle_id = uuid.UUID("2f1b6f0e-8a4e-4c8e-9d7e-0b8f3d6b1a11")
    assert bundles.part_id(bundle_id, 0) == uuid.uuid5(bundle_id, "0")


@pytest.mark.parametrize(
    ("statuses", "subject"),
    [
        (["ready", "ready"], "Your files are ready"),
        (["ready", "failed"], "Your files are ready, some could not be made"),
        (["failed", "failed"], "Your files could not be made"),
    ],
)
def test_the_bundle_email_says_what_came_of_the_parts(statuses: list[str], subject: str) -> None:
    parts = [
        {"index": i, "filename": f"f{i}.csv", "status": s, "message": "the file could not be made"}
        for i, s in enumerate(statuses)
    ]
    context = {
        "bundle_id": str(uuid.uuid4()),
        "request_id": "x",
        "parts": parts,
        "ready": statuses.count("ready"),
        "failed": statuses.count("failed"),
        "bundle_url": "https://files.example.com/bundle/t",
        "description": "<b>Q3</b>",
    }
    message = mail.render("bundle", "ann@example.com", "bgworker@example.com", context)
    assert message["Subject"] == subject
    html = message.get_body(("html",))
    assert html is not None and "&lt;b&gt;Q3&lt;/b&gt;" in str(html.get_content())
    text = message.get_body(("plain",))
    assert text is not None
    for part in parts:
        assert f"{part['filename']}" in str(text.get_content())
