"""A worker process keeps what startup made out of garbage collection pauses."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import gc
from bgworker import worker  # what a worker process has imported at startup
from bgworker.cli import main
from bgworker.worker import loopwatch
before = gc.get_freeze_count()
loopwatch.freeze_startup_objects()
frozen = gc.get_freeze_count()
gc.collect()
print(before, frozen, len(gc.get_objects()))
"""


def test_startup_objects_are_frozen_out_of_collections() -> None:
    # In a process of its own: freezing this test process would keep its garbage forever.
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    before, frozen, left = (int(x) for x in out)
    assert before == 0
    assert frozen > 10_000  # the modules, classes and schemas imported
    assert left < frozen / 10  # what a full collection still walks
