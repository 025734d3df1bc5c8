"""The package's public names (``from bgworker import ...``), loaded on first use, resolve."""

from __future__ import annotations

import subprocess
import sys

import bgworker


def test_every_public_name_resolves_in_a_fresh_process() -> None:
    # In a process of its own: this one may have imported the modules already.
    names = [n for n in bgworker.__all__ if n != "__version__"]
    code = f"import bgworker\nfor n in {names!r}:\n    getattr(bgworker, n)\n"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
