"""The README stays true: its configuration table, commands and set-up targets are real."""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType

from bgworker import arguments

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
    parser = arguments.parser()
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    missing = [name for name in sub.choices if f"`bgworker {name}" not in README]
    assert missing == []


def test_setup_commands_are_makefile_targets() -> None:
    makefile = (REPO / "Makefile").read_text()
    for target in ("demo", "test"):
        assert f"make {target}" in README
        assert re.search(rf"^{target}:", makefile, re.MULTILINE), target


# Paths as the README writes them: `bgworker/faults.py`, `store/queries.sql` (inside the
# package), `schemas/`, and the targets of relative links.
_CODE_SPAN = re.compile(r"`([^`\s]+)`")
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_FILE_SUFFIXES = (".py", ".sql", ".md", ".yaml", ".toml", ".json", ".html", ".txt")


def _looks_like_a_path(text: str) -> bool:
    if text in (".", "..") or "://" in text or text.startswith(("/", "-", "$", "#")):
        return False
    if "*" in text or "<" in text:
        return False
    first = text.split("/", 1)[0]
    return text.endswith("/") or text.endswith(_FILE_SUFFIXES) or (REPO / first).is_dir()


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_path_and_anchor_the_readme_names_exists() -> None:
    paths = {m for m in _CODE_SPAN.findall(README) if _looks_like_a_path(m)}
    links = set(_LINK.findall(README))
    paths |= {link for link in links if "://" not in link and not link.startswith("#")}
    # Outputs such as `bench/results/` or `.venv` exist only once made: git ignores them.
    ignored = {line.strip().rstrip("/") for line in (REPO / ".gitignore").read_text().splitlines()}
    paths = {path for path in paths if path.rstrip("/") not in ignored}
    assert len(paths) >= 10  # the README names files; this test must not pass on none
    # A path is relative to the repository or, like `store/queries.sql`, to the package.
    missing = sorted(
        path
        for path in paths
        if not any((base / path).exists() for base in (REPO, REPO / "bgworker"))
    )
    assert missing == [], f"README.md names paths that do not exist: {missing}"
    anchors = {_anchor(h) for h in re.findall(r"^#+ (.+)$", README, re.MULTILINE)}
    broken = sorted(link for link in links if link.startswith("#") and link[1:] not in anchors)
    assert broken == [], f"README.md links to headings that do not exist: {broken}"


def test_setup_says_what_make_test_installs() -> None:
    # Whatever scripts/test_deps.sh may apt-get install and `make node` may npm ci is named
    # in Set up, with the number of npm packages and the switch that installs nothing.
    setup = README[README.index("## Set up") : README.index("### Docker Compose")]
    script = (REPO / "scripts" / "test_deps.sh").read_text()
    makefile = (REPO / "Makefile").read_text()
    packages = re.findall(r"missing\+=\(([\w-]+)\)", script)
    assert packages and [p for p in packages if f"`{p}`" not in setup] == []
    [dirs] = re.findall(r"^NODE_DIRS := (.+)$", makefile, re.MULTILINE)
    assert [d for d in dirs.split() if f"`{d}`" not in setup] == []
    locked = sum(
        len([name for name in json.loads((REPO / d / "package-lock.json").read_text())["packages"]
             if name])
        for d in dirs.split()
    )  # fmt: skip
    assert f"{locked} packages from the npm" in setup
    assert "BGWORKER_TEST_INSTALL=no" in setup
    assert "BGWORKER_TEST_INSTALL" in script and "BGWORKER_TEST_INSTALL" in makefile
