"""`make test` cannot turn red by luck: the property tests draw the same examples on every
run (hypothesis profile "ci"), the header says which profile and seed ran, and `make fuzz`
is where the random search happens, with a seed that replays it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import REPO


def _draws() -> list[str]:
    seen: list[str] = []

    @given(st.text())
    def draw(text: str) -> None:
        seen.append(text)

    draw()
    return seen


def test_two_runs_of_a_property_test_draw_the_same_examples() -> None:
    if settings.get_current_profile_name() != "ci":
        pytest.skip("HYPOTHESIS_PROFILE selects another profile than make test's")
    current = settings()
    # No database: examples saved by an earlier run here cannot be replayed first.
    assert current.derandomize and current.database is None
    first = _draws()
    assert len(first) > 10 and first == _draws()


def _header(*args: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k != "HYPOTHESIS_PROFILE"}
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--co", "-p", "no:cacheprovider", *args,
         "tests/unit/test_reproducible.py"],
        cwd=REPO, env={**clean, **env}, capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    return next(line for line in out.splitlines() if line.startswith("hypothesis profile"))


def test_the_header_names_the_profile_and_the_seed() -> None:
    ci = _header()
    assert ci.startswith("hypothesis profile ci: derandomized") and "database=None" in ci
    fuzz = _header("--hypothesis-seed=1234", HYPOTHESIS_PROFILE="fuzz")
    assert fuzz.startswith("hypothesis profile fuzz: seed 1234, max_examples=1000")


def test_make_fuzz_searches_at_random_with_a_seed_it_prints() -> None:
    plan = subprocess.run(
        ["make", "-n", "fuzz", "SEED=99"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert "HYPOTHESIS_PROFILE=fuzz" in plan and '--hypothesis-seed="$seed"' in plan
    assert 'seed="99"' in plan


def test_git_ignores_the_example_database() -> None:
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", ".hypothesis/examples/x"], cwd=REPO, check=False
    )
    assert ignored.returncode == 0
