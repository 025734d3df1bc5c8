"""A baseline commit of bgworker as a contender next to the current code, in one run.

``--baseline REV`` extracts REV (``git archive``) into a cached directory and makes a venv
of its own whose path is REV's tree first, then the current venv's site-packages (one
``.pth`` file; the current venv's own ``.pth`` hooks, such as its editable bgworker, are
not processed from there). Its worker runs as the contender ``bgworker@REV`` with REV's
own ``bench.handlers``. The dependencies are the current venv's on purpose: the
before/after figures then differ by bgworker's code only.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Final

from bench import common

CACHE: Final = Path(os.environ.get("BENCH_BASELINE_DIR", tempfile.gettempdir()))
# The repository REV is read from: this tree's, unless the bench runs from an export of it.
GIT_REPO: Final = Path(os.environ.get("BENCH_GIT_REPO", common.REPO))


def resolve(rev: str) -> str:
    out = subprocess.run(
        ["git", "rev-parse", "--short=7", f"{rev}^{{commit}}"],
        cwd=GIT_REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def install(rev: str) -> tuple[Path, Path]:
    """(source tree, venv python) of ``rev``, made once and cached by commit."""
    short = resolve(rev)
    root = CACHE / f"bgw_bench_baseline_{short}"
    src, venv = root / "src", root / "venv"
    python = venv / "bin" / "python"
    stamp = root / ".installed"
    if stamp.exists():
        return src, python
    common.log(f"installing baseline {short} into {root}")
    src.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "archive", "--format=tar", short], cwd=GIT_REPO, capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(purelib) / "bgw_bench_baseline.pth").write_text(
        f"{src}\n{sysconfig.get_path('purelib')}\n"
    )
    check = "import bgworker, sys; sys.stdout.write(bgworker.__file__)"
    where = subprocess.run(
        [str(python), "-c", check], cwd=root, capture_output=True, text=True, check=True
    ).stdout
    if str(src) not in where:
        raise RuntimeError(f"baseline venv imports bgworker from {where}, not its own install")
    stamp.touch()
    return src, python
