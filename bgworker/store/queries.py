"""Named SQL blocks from every ``.sql`` file in the store package, parsed once at import."""

from __future__ import annotations

import re
from importlib import resources
from typing import Final

_NAME_RE: Final = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


def parse(text: str, queries: dict[str, str] | None = None) -> dict[str, str]:
    """Split ``-- name: x`` blocks; a block runs until the next name line. Into ``queries``
    when given (a name defined twice, in one file or across files, is refused)."""
    queries = {} if queries is None else queries
    parts = _NAME_RE.split(text)
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = body.strip()
    return queries


def load() -> dict[str, str]:
    """Every query block of ``bgworker/store/*.sql`` (one file per concept); each file is
    parsed on its own, so a file's leading comment never joins another file's last block."""
    queries: dict[str, str] = {}
    files = sorted(resources.files("bgworker.store").iterdir(), key=lambda f: f.name)
    for file in files:
        if file.is_file() and file.name.endswith(".sql"):
            parse(file.read_text(), queries)
    return queries


QUERIES: Final = load()
