"""The layer contract: what import-linter checks is what the architecture page draws,
covers every subsystem folder, and catches an import that goes up a layer."""

from __future__ import annotations

import pkgutil
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

import bgworker

REPO = Path(__file__).resolve().parents[2]
PYPROJECT: dict[str, Any] = tomllib.loads((REPO / "pyproject.toml").read_text())
ARCHITECTURE = (REPO / "docs" / "architecture.md").read_text()
LABEL_WIDTH = 15  # the diagram's first column names the band


def _contract(contract_id: str) -> dict[str, Any]:
    contracts: list[dict[str, Any]] = PYPROJECT["tool"]["importlinter"]["contracts"]
    [contract] = [c for c in contracts if c["id"] == contract_id]
    return contract


def _layers() -> list[list[tuple[str, bool]]]:
    """(module, optional) per layer of the main contract, top first."""
    out = []
    for layer in _contract("layers")["layers"]:
        names = re.split(r"[|:]", layer)
        out.append([(n.strip().strip("()"), n.strip().startswith("(")) for n in names])
    return out


def _modules() -> set[str]:
    return {m.name for m in pkgutil.iter_modules(bgworker.__path__)}


def _diagram() -> list[tuple[int, int, str]]:
    """(line, column, name) for every folder or module in the architecture page's drawing."""
    block = ARCHITECTURE.split("<!-- layers:start")[1].split("<!-- layers:end -->")[0]
    block = block.split("```text\n")[1].split("```")[0]
    found = []
    for row, line in enumerate(block.splitlines()):
        for match in re.finditer(r"[A-Za-z_]+", line[LABEL_WIDTH:]):
            found.append((row, match.start(), match[0]))
    return found


def test_every_module_is_in_a_layer() -> None:
    layered = {name for layer in _layers() for name, _ in layer}
    assert _modules() - layered == set()
    # ... and every required layer member exists (optional ones are packages on their way).
    required = {name for layer in _layers() for name, optional in layer if not optional}
    assert required - _modules() == set()
    assert _contract("layers")["exhaustive"] is True


def test_the_architecture_page_draws_the_layers_of_the_contract() -> None:
    drawn = _diagram()
    names = [name for _, _, name in drawn]
    assert len(names) == len(set(names)), "a module is drawn twice"
    layer_of = {name: i for i, layer in enumerate(_layers()) for name, _ in layer}
    assert set(names) == set(layer_of), "the drawing and pyproject.toml name other modules"
    # Read top to bottom, left to right, the drawing lists the layers in the contract's order.
    order = [layer_of[name] for _, _, name in sorted(drawn)]
    assert order == sorted(order)


def test_the_architecture_page_names_every_module_of_every_folder() -> None:
    named = set(re.findall(r"`(?:[a-z_]+/)*([a-z_][a-z0-9_]*)(?:\.py|/)?`", ARCHITECTURE))
    inside = {
        m.name
        for folder in pkgutil.iter_modules(bgworker.__path__)
        if folder.ispkg
        for m in pkgutil.iter_modules([str(Path(bgworker.__path__[0]) / folder.name)])
    }
    assert (_modules() | inside) - {"__main__"} - named == set()


@pytest.mark.skipif(
    shutil.which("lint-imports", path=str(Path(sys.executable).parent)) is None,
    reason="import-linter is not installed",
)
def test_an_import_up_a_layer_breaks_the_contract(tmp_path: Path) -> None:
    # A copy of the package in which the contract layer imports the runtime.
    shutil.copytree(REPO / "bgworker", tmp_path / "bgworker")
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    events = tmp_path / "bgworker" / "contract" / "events.py"
    events.write_text(events.read_text() + "\nfrom bgworker import worker  # noqa: E402\n")
    lint = str(Path(sys.executable).parent / "lint-imports")

    def run(cwd: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [lint, "--no-logo", "--no-cache"],
            cwd=cwd,
            env={"PYTHONPATH": str(cwd), "PATH": str(Path(sys.executable).parent)},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    broken = run(tmp_path)
    assert broken.returncode == 1, broken.stdout
    assert "bgworker.contract is not allowed to import bgworker.worker" in broken.stdout
    assert "bgworker.contract.events -> bgworker.worker" in broken.stdout
    kept = run(REPO)
    assert kept.returncode == 0, kept.stdout
