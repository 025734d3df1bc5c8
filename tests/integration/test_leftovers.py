"""No test leaves queues or exchanges on the shared broker: a test's topology goes with its
namespace even when the test fails, and a run whose tests left anything under their
namespaces fails, naming them (tests/conftest.py, broker_left_clean)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests import helpers


def test_a_run_that_leaves_something_fails_and_names_the_test(tmp_path: Path) -> None:
    log = tmp_path / "namespaces"
    run = subprocess.run(
        # -rN: no short summary, which repeats the report (in full where CI is set).
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rN", "tests/leaky_tests.py"],
        cwd=helpers.REPO,
        env={**os.environ, "BGWORKER_TEST_LEAK_LOG": str(log)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    leaked, failed = log.read_text().split()
    assert run.returncode == 1, run.stdout
    assert "1 failed, 1 passed, 1 error" in run.stdout, run.stdout
    # Only the queue nothing in bgworker knows of: the failed test's topology, its extra
    # retry tier included, went with its namespace.
    _, _, after = run.stdout.partition("were left on RabbitMQ (now deleted):\n")
    report = after.split("\n_", 1)[0].split("\n=", 1)[0] + "\n"
    assert run.stdout.count("1 queues and exchanges were left") == 1, run.stdout
    assert (
        "tests/leaky_tests.py::test_declares_a_queue_of_its_own_and_leaves_it: "
        f"queue {leaked}.left-behind\n"
    ) in report
    assert failed not in report
    # And the check deleted what it found.
    assert helpers.on_broker([leaked, failed]) == []
