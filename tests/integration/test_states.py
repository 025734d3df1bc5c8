"""The names of states live in ``bgworker.contract.states``; the database checks the same values."""

from __future__ import annotations

import re
from enum import StrEnum

import pytest

from bgworker import store
from bgworker.contract import states


async def _allowed(db: store.Store, table: str, column: str) -> set[str]:
    definitions = await db.pool.fetch(
        "SELECT pg_get_constraintdef(oid) AS def FROM pg_constraint "
        "WHERE conrelid = $1::regclass AND contype = 'c'",
        table,
    )
    for row in definitions:
        if re.search(rf"\b{column}\b", row["def"]) and "ARRAY" in row["def"]:
            return set(re.findall(r"'([a-z_]+)'::text", row["def"]))
    raise AssertionError(f"no CHECK constraint lists the values of {table}.{column}")


@pytest.mark.parametrize(
    ("table", "column", "enum"),
    [
        ("bgworker_requests", "status", states.Status),
        ("bgworker_attempts", "outcome", states.AttemptOutcome),
        ("bgworker_outbox", "kind", states.EffectKind),
        ("bgworker_outbox", "status", states.EffectStatus),
    ],
)
async def test_the_database_allows_exactly_the_enum_values(
    db: store.Store, table: str, column: str, enum: type[StrEnum]
) -> None:
    assert await _allowed(db, table, column) == {member.value for member in enum}
