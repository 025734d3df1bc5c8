"""The store's query files: parsed once, one namespace, parameters named where there are many,
and no SQL anywhere else in the package."""

from __future__ import annotations

import ast
import re
from importlib import resources
from pathlib import Path
from typing import Final

import pytest
from hypothesis import given
from hypothesis import strategies as st

import bgworker
from bgworker.store import queries

PACKAGE: Final = Path(bgworker.__file__).parent
# Queries that take more than four parameters but do not name them yet: the dead-letter
# blocks moved verbatim into dead_letters.sql, whose owner (the dead-letter package) names
# them.
UNNAMED_PENDING: Final[set[str]] = set()
# Modules whose inline SQL other parts of issue 13 replace (the façade, e.g.
# ``Store.maintenance.ping()``):
# remove each entry once its module runs its queries through the store.
INLINE_SQL_PENDING: Final[set[str]] = set()
SQL_START: Final = re.compile(
    r"^\s*(SELECT|INSERT\s+INTO|UPDATE\s+\w+|DELETE\s+FROM|WITH\s+\w+\s+AS|"
    r"CREATE\s+(TABLE|DATABASE|INDEX)|ALTER\s+TABLE|DROP\s+)\b"
)
POOL_CALLS: Final = {"fetch", "fetchrow", "fetchval", "execute", "executemany"}


def test_every_query_file_of_the_store_is_loaded() -> None:
    folder = resources.files("bgworker.store")
    files = {e.name for e in folder.iterdir() if e.name.endswith(".sql")}
    assert {q.file for q in queries.NAMED.values()} == files
    assert {"requests.sql", "recovery.sql", "outbox.sql", "maintenance.sql"} <= files
    assert queries.QUERIES == {name: q.sql for name, q in queries.NAMED.items()}
    # The migrations folder holds schema, not named queries.
    assert not any(q.file.startswith("0") for q in queries.NAMED.values())


def test_queries_with_many_parameters_name_them() -> None:
    unnamed = {
        name
        for name, query in queries.NAMED.items()
        if queries.placeholders(query.sql) > 4 and not query.params
    }
    assert unnamed == UNNAMED_PENDING


def test_bind_orders_keywords_by_placeholder() -> None:
    sql, *args = queries.bind(
        "mark_ready",
        claim_seconds=30.0,
        effects=[],
        total=20,
        done=7,
        attempt=3,
        storage_key="ab/key",
        sha256="f" * 64,
        size=10,
        lease_token="token",
        request_id="id",
    )
    assert sql == queries.QUERIES["mark_ready"]
    assert args == ["id", "token", 10, "f" * 64, "ab/key", 3, 7, 20, [], 30.0]


def test_bind_refuses_a_missing_or_unknown_name() -> None:
    values = dict.fromkeys(queries.NAMED["mark_retrying"].params, None)
    with pytest.raises(TypeError, match="missing \\['error'\\]"):
        queries.bind("mark_retrying", **{k: v for k, v in values.items() if k != "error"})
    with pytest.raises(TypeError, match="unknown \\['eror'\\]"):
        queries.bind("mark_retrying", **values, eror=None)
    with pytest.raises(TypeError, match="declares no parameter names"):
        queries.bind("get_request", id=None)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;", "defined twice"),
        ("-- name: a\nSELECT $1, $3;", r"not \$1\.\.\$n"),
        ("-- name: a\n-- params: x, y\nSELECT $1;", "takes 1 parameters"),
        ("-- name: a\n-- params: x, x\nSELECT $1, $2;", "takes 2 parameters"),
        ("-- name: a\n-- params: x\n-- params: x\nSELECT $1;", "more than one params line"),
    ],
)
def test_parse_refuses_inconsistent_blocks(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        queries.parse(text)


def test_placeholders_in_comments_are_not_counted() -> None:
    assert queries.placeholders("-- uses $2 later\nSELECT $1;") == 1


_identifier = st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True)


@given(names=st.lists(_identifier, min_size=1, max_size=15, unique=True), width=st.integers(1, 5))
def test_a_params_line_may_wrap_after_any_comma(names: list[str], width: int) -> None:
    lines = [", ".join(names[i : i + width]) for i in range(0, len(names), width)]
    declared = "-- params: " + ",\n--         ".join(lines)
    body = "SELECT " + ", ".join(f"${i}" for i in range(1, len(names) + 1)) + ";"
    [query] = queries.parse(f"-- name: q\n{declared}\n-- a comment, after\n{body}").values()
    assert query.params == tuple(names)
    values = {name: index for index, name in enumerate(names)}
    assert query.args(**values) == tuple(range(len(names)))


def _modules() -> list[tuple[str, ast.Module]]:
    return [
        (path.relative_to(PACKAGE).as_posix(), ast.parse(path.read_text()))
        for path in sorted(PACKAGE.rglob("*.py"))
    ]


def test_no_sql_in_python_modules() -> None:
    found = {
        name
        for name, tree in _modules()
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and SQL_START.match(node.value)
    }
    assert found <= INLINE_SQL_PENDING, f"SQL outside the .sql files in {found}"


def test_only_the_store_runs_queries_on_its_pool() -> None:
    found = {
        name
        for name, tree in _modules()
        if not name.startswith("store/")
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr in POOL_CALLS
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "pool"
    }
    assert found <= INLINE_SQL_PENDING, f"queries outside the store's façade in {found}"
