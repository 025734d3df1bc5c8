"""``BundleRequested``: one request naming several parts, each built as a request of its own.

A bundle is published once (routing key ``bundle.requested``); the worker that takes it
records the bundle and one ``FileRequested`` per part, whose id is derived from the bundle's
(``part_id``: uuid5 of the bundle id and the part's index), so a redelivered or republished
bundle names the same parts and nothing is built twice. Each part then lives as any request
does (retries, dead letters, cancel, its own download link); the bundle adds one email when
the last part ended, one page, and one ZIP of the ready parts.
"""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Any, Final, Literal

from pydantic import BeforeValidator, Field, model_validator

from bgworker.contract import event_fields, events, patterns

# Enough for "every export of a dashboard", few enough that one page, one email and one ZIP
# central directory stay small; each part is a request in the work queue.
MAX_PARTS: Final = 20
DEFAULT_ZIP_NAME: Final = "bundle.zip"


def part_id(bundle_id: uuid.UUID, index: int) -> uuid.UUID:
    """The request id of a bundle's part ``index`` (0-based): the same on every delivery."""
    return uuid.uuid5(bundle_id, str(index))


class BundlePart(events._Event):
    """One file of the bundle: what a ``FileRequested`` would say about the file."""

    file_type: event_fields.FileType = Field(description="Registered handler name.")
    criteria: event_fields.Criteria = Field(default_factory=dict, description="Handler input.")
    filename: event_fields.Filename | None = Field(
        None, description="Its name in the download, the email and the ZIP."
    )
    content_type: event_fields.ContentType | None = None


def _key(part: BundlePart) -> str:
    return json.dumps(part.model_dump(mode="json"), sort_keys=True)


class BundleRequested(events._Event):
    """Published by a service that wants several files delivered together. ``id`` is the
    idempotency key of the bundle; its parts' ids derive from it (``part_id``)."""

    schema_version: Annotated[Literal[1], BeforeValidator(events._schema_version)] = (
        events.SCHEMA_VERSION
    )
    id: event_fields.Uuid = Field(description="Made by the producer; publishing twice is harmless.")
    parts: list[BundlePart] = Field(
        min_length=1,
        max_length=MAX_PARTS,
        description=(
            f"1 to {MAX_PARTS} files; no two alike, no two with the same filename. Part i "
            "is the request uuid5(id, str(i))."
        ),
    )
    filename: event_fields.Filename | None = Field(
        None, description=f"The ZIP's name. Absent or null: `{DEFAULT_ZIP_NAME}`."
    )
    description: event_fields.Description = ""
    requester: events.Requester | None = None
    tenant: event_fields.Tenant | None = None
    priority: event_fields.Priority = "normal"
    requested_at: event_fields.RequestedAt = Field(default_factory=events._now)
    lifetime_seconds: event_fields.JsonInteger = Field(
        7 * 24 * 3600, ge=60, le=patterns.MAX_LIFETIME_SECONDS
    )

    @model_validator(mode="after")
    def _distinct_parts(self) -> BundleRequested:
        seen: dict[str, int] = {}
        names: dict[str, int] = {}
        for index, part in enumerate(self.parts):
            first = seen.setdefault(_key(part), index)
            if first != index:
                raise event_fields.error(f"parts[{index}] is the same part as parts[{first}]")
            if part.filename is not None:
                other = names.setdefault(part.filename, index)
                if other != index:
                    raise event_fields.error(
                        f"parts[{index}].filename {part.filename!r} is also parts[{other}]'s"
                    )
        return self

    def part_events(self) -> list[events.FileRequested]:
        """Each part as the ``FileRequested`` the worker builds it from; ``requested_at`` set
        explicitly, so a redelivery of a part compares equal to its recorded row."""
        return [
            events.FileRequested(
                id=part_id(self.id, index),
                file_type=part.file_type,
                criteria=part.criteria,
                filename=part.filename,
                content_type=part.content_type,
                description=self.description,
                requester=self.requester,
                tenant=self.tenant,
                priority=self.priority,
                requested_at=self.requested_at,
                lifetime_seconds=self.lifetime_seconds,
            )
            for index, part in enumerate(self.parts)
        ]


def parse_bundle_requested(body: bytes) -> BundleRequested:
    """A ``BundleRequested`` body; raises events.InvalidEventError and nothing else."""
    return events.parse_model(body, BundleRequested)


def zip_name(event: dict[str, Any]) -> str:
    name = event.get("filename")
    return name if isinstance(name, str) and name else DEFAULT_ZIP_NAME


# Every event of the contract: the request's and this module's (schemas/, the AsyncAPI
# document and their tests read it here, events being below this module).
ALL_EVENT_MODELS: Final = {**events.EVENT_MODELS, "BundleRequested": BundleRequested}


def json_schemas() -> dict[str, str]:
    """``events.json_schemas`` for every event, the bundle's included."""
    return events.json_schemas({"BundleRequested": BundleRequested})
