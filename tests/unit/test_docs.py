"""The docs stay true: the README and the pages of docs/ (the MkDocs site) name settings,
commands, files and headings that exist. `mkdocs build --strict` in `make test` checks the
site's own links; these tests also cover the README, which the site does not build."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from bgworker import settings as settings_mod
from bgworker.cli import arguments

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
README = (REPO / "README.md").read_text()
REFERENCE = (DOCS / "reference.md").read_text()
OPERATING = (DOCS / "operating.md").read_text()
PAGES = sorted(DOCS.glob("*.md"))


def _settings_table() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "settings_table", REPO / "scripts" / "settings_table.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reference_has_the_current_settings_table() -> None:
    table = _settings_table().render()
    assert table in REFERENCE, (
        "docs/reference.md's configuration table is out of date: "
        "run `.venv/bin/python scripts/settings_table.py --write`"
    )


def test_help_lists_the_current_settings() -> None:
    # `bgworker --help` reads a generated copy (importing pydantic would double its time).
    assert list(arguments.SETTINGS) == _settings_table().help_rows(), (
        "bgworker/arguments.py's SETTINGS is out of date: "
        "run `.venv/bin/python scripts/settings_table.py --write`"
    )
    assert arguments.ENV_PREFIX == settings_mod.ENV_PREFIX


def test_settings_table_write_replaces_only_the_table(tmp_path: Path) -> None:
    module = _settings_table()
    stale = tmp_path / "reference.md"
    stale.write_text(f"intro\n{module.START}\n| old |\n{module.END}\noutro\n")
    assert module.write(stale) is True
    text = stale.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n")
    assert "| old |" not in text and module.render() in text
    assert module.write(stale) is False


def test_operating_names_every_cli_command() -> None:
    parser = arguments.parser()
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    missing = [name for name in sub.choices if f"`bgworker {name}" not in OPERATING]
    assert missing == []


def test_setup_commands_are_makefile_targets() -> None:
    makefile = (REPO / "Makefile").read_text()
    for target in ("demo", "test"):
        assert f"make {target}" in README
        assert re.search(rf"^{target}:", makefile, re.MULTILINE), target
    assert "make docs" in README and re.search(r"^docs:", makefile, re.MULTILINE)


def test_every_page_is_in_the_site_and_the_readme() -> None:
    nav = (REPO / "mkdocs.yml").read_text()
    for page in PAGES:
        assert f": {page.name}\n" in nav, page.name
        if page.name != "index.md":
            assert f"](docs/{page.name})" in README, page.name


def test_the_readme_the_home_page_and_the_architecture_page_agree() -> None:
    """The README's first paragraph opens the site's home page, and its flow picture is on
    the home and architecture pages (copies, so that each reads on GitHub too)."""
    intro = README.split("\n\n")[1]
    assert intro.startswith("bgworker builds files") and intro in (DOCS / "index.md").read_text()
    drawn = README.split("<!-- flow:start")[1].split("-->\n", 1)[1].split("<!-- flow:end -->")[0]
    assert drawn.startswith("```text\n") and "bgworker serve" in drawn
    for page in ("index.md", "architecture.md"):
        assert drawn in (DOCS / page).read_text(), page


# Paths as the docs write them: `bgworker/faults.py`, `store/queries.sql` (inside the
# package), `schemas/`, and the targets of relative links.
_CODE_SPAN = re.compile(r"`([^`\s]+)`")
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_FILE_SUFFIXES = (".py", ".sql", ".md", ".yaml", ".toml", ".json", ".html", ".txt", ".png")

# The pages name modules by their place after issue 19's move into subsystem packages
# (`bgworker/worker/pool.py`). Until that move has landed, such a path stands for the flat
# module it replaces; once it has, every new path exists and this table is never consulted
# (delete it then).
_UNTIL_THE_MOVE = {
    "bgworker/contract/events.py": "bgworker/events.py",
    "bgworker/contract/requester_texts.py": "bgworker/messages.py",
    "bgworker/worker/pool.py": "bgworker/worker.py",
    "bgworker/ops/deadletters/": "bgworker/deadletters/",
    "bgworker/ops/deadletters/letters.py": "bgworker/deadletters/letters.py",
    # The packages themselves (`contract/`): their modules sit flat in bgworker/ until then.
    **{
        f"bgworker/{package}/": "bgworker/"
        for package in (
            "cli contract effects handlers links messaging observe ops producing worker".split()
        )
    },
}


def _looks_like_a_path(text: str) -> bool:
    if text in (".", "..") or "://" in text or text.startswith(("/", "-", "$", "#")):
        return False
    if "*" in text or "<" in text:
        return False
    first = text.split("/", 1)[0]
    return text.endswith("/") or text.endswith(_FILE_SUFFIXES) or (REPO / first).is_dir()


def _anchor(heading: str) -> str:
    """GitHub's (and MkDocs') anchor for a heading: lower case, punctuation dropped, spaces
    to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(text: str) -> set[str]:
    body = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    return {_anchor(h) for h in re.findall(r"^#+ (.+)$", body, re.MULTILINE)}


def _exists(path: str, base: Path) -> bool:
    if (base / path).exists():
        return True
    target = (base / path).resolve()
    if target.is_relative_to(REPO):
        path = target.relative_to(REPO).as_posix() + ("/" if path.endswith("/") else "")
    old = _UNTIL_THE_MOVE.get(path)
    return old is not None and (REPO / old).exists()


@pytest.mark.parametrize("doc", [REPO / "README.md", *PAGES], ids=lambda p: p.name)
def test_every_path_and_anchor_a_page_names_exists(doc: Path) -> None:
    text = doc.read_text()
    spans = {m for m in _CODE_SPAN.findall(text) if _looks_like_a_path(m)}
    links = {link for link in _LINK.findall(text) if "://" not in link and not link.startswith("#")}
    # Outputs such as `bench/results/` or `.venv` exist only once made: git ignores them.
    ignored = {line.strip().rstrip("/") for line in (REPO / ".gitignore").read_text().splitlines()}
    # A code span names a file of the repository or, like `store/queries.sql`, of the package;
    # a link is relative to the page that holds it.
    missing = sorted(
        span
        for span in spans
        if span.rstrip("/") not in ignored
        and not any(_exists(span, base) for base in (REPO, REPO / "bgworker"))
    )
    missing += sorted(
        link for link in links if not _exists(link.split("#", 1)[0] or doc.name, doc.parent)
    )
    assert missing == [], f"{doc.name} names paths that do not exist: {missing}"
    # Anchors: on the page itself (`#storage`) or on another page (`operating.md#metrics`).
    broken = []
    for link in _LINK.findall(text):
        if "#" not in link or "://" in link:
            continue
        page, anchor = link.split("#", 1)
        target = (doc.parent / page) if page else doc
        if target.suffix == ".md" and anchor not in _anchors(target.read_text()):
            broken.append(link)
    assert broken == [], f"{doc.name} links to headings that do not exist: {broken}"


def _build(project: Path, site: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``mkdocs build --strict`` of ``project`` into ``site`` (default: the project's)."""
    mkdocs = Path(sys.executable).parent / "mkdocs"
    return subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(site or project / "site")],
        cwd=project,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _project(tmp_path: Path, page: str, nav: list[str]) -> Path:
    """A two-page site under the real mkdocs.yml's theme, checks and hook."""
    tmp_path.mkdir()
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    config["nav"] = nav
    config["hooks"] = [str(REPO / "scripts" / "mkdocs_hooks.py")]
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text(page)
    (tmp_path / "docs" / "other.md").write_text("# Other\n\n## Here\n")
    (tmp_path / "present.conf").write_text("")
    return tmp_path


def test_the_site_builds_strict(tmp_path: Path) -> None:
    built = _build(REPO, tmp_path / "site")  # not into the checkout's site/
    assert built.returncode == 0, built.stderr
    assert (tmp_path / "site" / "reference" / "index.html").exists()


@pytest.mark.parametrize(
    ("page", "nav", "complaint"),
    [
        ("# Home\n\n[a file](../absent.conf)\n", ["index.md", "other.md"], "absent.conf"),
        ("# Home\n\n[a page](missing.md)\n", ["index.md", "other.md"], "missing.md"),
        ("# Home\n\n[a heading](other.md#nowhere)\n", ["index.md", "other.md"], "nowhere"),
        ("# Home\n", ["index.md"], "other.md"),  # a page left out of the nav
    ],
)
def test_a_broken_link_or_a_page_out_of_the_nav_fails_the_build(
    tmp_path: Path, page: str, nav: list[str], complaint: str
) -> None:
    good = _build(
        _project(tmp_path / "good", "# Home\n\n[conf](../present.conf)\n", ["index.md", "other.md"])
    )
    assert good.returncode == 0, good.stderr
    bad = _build(_project(tmp_path / "bad", page, nav))
    assert bad.returncode != 0 and complaint in bad.stderr, bad.stderr


def test_setup_says_what_make_test_installs() -> None:
    # Whatever scripts/test_deps.sh may apt-get install and `make node` may npm ci is named
    # in Set up, with the number of npm packages and the switch that installs nothing.
    page = (REPO / "docs" / "getting-started.md").read_text()
    setup = page[page.index("## Set up") : page.index("## Docker Compose")]
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
