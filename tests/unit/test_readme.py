"""The README stays true: its configuration table, commands and set-up targets are real."""

from __future__ import annotations

import argparse
import importlib.util
import re
from pathlib import Path
from types import ModuleType

from bgworker import cli

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()


def _settings_table() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "settings_table", REPO / "scripts" / "settings_table.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_has_the_current_settings_table() -> None:
    table = _settings_table().render()
    assert table in README, (
        "README.md's configuration table is out of date: "
        "run `.venv/bin/python scripts/settings_table.py --write`"
    )


def test_settings_table_write_replaces_only_the_table(tmp_path: Path) -> None:
    module = _settings_table()
    stale = tmp_path / "README.md"
    stale.write_text(f"intro\n{module.START}\n| old |\n{module.END}\noutro\n")
    assert module.write(stale) is True
    text = stale.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n")
    assert "| old |" not in text and module.render() in text
    assert module.write(stale) is False


def test_readme_names_every_cli_command() -> None:
    parser = cli._parser()
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    missing = [name for name in sub.choices if f"`bgworker {name}" not in README]
    assert missing == []


def test_setup_commands_are_makefile_targets() -> None:
    makefile = (REPO / "Makefile").read_text()
    for target in ("demo", "test"):
        assert f"make {target}" in README
        assert re.search(rf"^{target}:", makefile, re.MULTILINE), target


def test_placeholder_sections_exist_for_later_issues() -> None:
    for heading in ("## Architecture", "## Guarantees and limits", "## Dead-letter queue"):
        assert heading in README
    assert "## Benchmarks" in README
