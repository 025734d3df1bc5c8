"""Named SQL blocks from every ``.sql`` file of the store, parsed once at import.

Like procrastinate's ``sql/__init__.py``: the SQL lives in files, one ``-- name: x`` block
per query, and Python refers to a query by its name. A block runs until the next name line.
Placeholders are asyncpg's ``$1``, ``$2``, ... (PostgreSQL's own syntax, sent unchanged).

A block whose query takes many parameters names them, ``$1`` first, in a ``-- params:``
comment (it may wrap onto further ``--`` lines after a comma); :func:`bind` then takes them
by keyword, so a call site says which value goes where instead of counting positions.
Parsing checks every block: placeholders numbered ``$1..$n`` without a gap, and a
``params`` line naming exactly ``n`` distinct parameters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final

_NAME_RE: Final = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)
_PARAMS_RE: Final = re.compile(r"^--\s*params:((?:[ \w,]*,[ \t]*\n--)*[ \w,]*)$", re.MULTILINE)
_COMMENT_RE: Final = re.compile(r"--[^\n]*")
_PLACEHOLDER_RE: Final = re.compile(r"\$(\d+)")


@dataclass(frozen=True)
class Query:
    name: str
    file: str
    sql: str
    # Names of $1..$n when the block declares them (``-- params:``), else empty.
    params: tuple[str, ...]

    def args(self, **values: Any) -> tuple[Any, ...]:
        """``values`` in placeholder order; every declared name exactly once."""
        if not self.params:
            raise TypeError(f"query {self.name!r} ({self.file}) declares no parameter names")
        if len(values) == len(self.params):  # the hot path: no sets built
            try:
                return tuple([values[p] for p in self.params])
            except KeyError:
                pass
        missing = [p for p in self.params if p not in values]
        unknown = sorted(set(values) - set(self.params))
        raise TypeError(f"query {self.name!r}: missing {missing}, unknown {unknown}")


def placeholders(sql: str) -> int:
    """How many parameters the query takes (comments aside); raises on a gap."""
    used = {int(n) for n in _PLACEHOLDER_RE.findall(_COMMENT_RE.sub("", sql))}
    if used != set(range(1, len(used) + 1)):
        raise ValueError(f"placeholders {sorted(used)} are not $1..$n")
    return len(used)


def _query(name: str, file: str, body: str) -> Query:
    declared = _PARAMS_RE.findall(body)
    if len(declared) > 1:
        raise ValueError(f"query {name!r} ({file}) has more than one params line")
    params = tuple(re.findall(r"\w+", declared[0])) if declared else ()
    try:
        count = placeholders(body)
    except ValueError as exc:
        raise ValueError(f"query {name!r} ({file}): {exc}") from None
    if params and (len(params) != count or len(set(params)) != count):
        raise ValueError(f"query {name!r} ({file}) takes {count} parameters, names {params}")
    return Query(name, file, body, params)


def parse(text: str, file: str = "<text>") -> dict[str, Query]:
    """Split ``-- name: x`` blocks of one file."""
    parts = _NAME_RE.split(text)
    queries: dict[str, Query] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice in {file}")
        queries[name] = _query(name, file, body.strip())
    return queries


def load() -> dict[str, Query]:
    """Every ``.sql`` file next to this module (not the migrations): one namespace."""
    queries: dict[str, Query] = {}
    folder = resources.files("bgworker.store")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql"):
            continue
        for name, query in parse(entry.read_text(), entry.name).items():
            if name in queries:
                raise ValueError(f"query {name!r} is in {queries[name].file} and {entry.name}")
            queries[name] = query
    return queries


NAMED: Final = load()
# The SQL text by name, for ``conn.fetch(QUERIES["x"], $1, $2)``.
QUERIES: Final = {name: query.sql for name, query in NAMED.items()}


def bind(name: str, /, **values: Any) -> tuple[Any, ...]:
    """``(sql, $1, ..., $n)`` of a block with a params line, from keyword values: call it as
    ``conn.fetchrow(*bind("mark_ready", request_id=..., ...))``."""
    query = NAMED[name]
    return (query.sql, *query.args(**values))
