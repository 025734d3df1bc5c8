"""Named SQL blocks from ``queries.sql``, parsed once at import."""

from __future__ import annotations

import re
from importlib import resources
from typing import Final

_NAME_RE: Final = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


def parse(text: str) -> dict[str, str]:
    """Split ``-- name: x`` blocks; a block runs until the next name line."""
    parts = _NAME_RE.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = body.strip()
    return queries


QUERIES: Final = parse(resources.files("bgworker.store").joinpath("queries.sql").read_text())
