"""BGWORKER_LOG_FORMAT=json: every log line of a job parses as JSON and carries the job's
request id, file type, attempt and worker id, from the job's task and from a sync handler's
thread. Lines outside a job carry no job fields."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.contract import states
from bgworker.observe import logs
from tests import helpers


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """The root logger writes JSON lines to a buffer, as ``logs.configure`` sets up."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.formatter("json"))
    handler.addFilter(logs.JobFields())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield out
    root.removeHandler(handler)
    root.setLevel(level)


def _lines(out: io.StringIO) -> list[dict[str, Any]]:
    parsed = []
    for line in out.getvalue().splitlines():
        record = json.loads(line)  # every line, job or not, is one JSON object
        assert isinstance(record, dict)
        parsed.append(record)
    return parsed


async def test_every_line_of_a_job_is_json_with_its_fields(
    json_lines: io.StringIO,
    db: store.Store,
    publish: helpers.Publish,
    start_worker: helpers.StartWorker,
    settings: settings_mod.Settings,
) -> None:
    settings.handlers.append("tests.log_handlers:registry")
    w = await start_worker()
    flaky = await publish("flaky", {"fail_times": 1})  # attempt 1 fails, attempt 2 ready
    on_loop = await publish("logs_async")
    on_thread = await publish("logs_sync")
    jobs = (flaky, on_loop, on_thread)
    for event in jobs:
        await helpers.wait_for_status(db, event.id, states.Status.READY)

    lines = _lines(json_lines)
    for event in (on_loop, on_thread):
        handler_lines = [r for r in lines if r["message"].startswith(f"handler of {event.id}")]
        assert len(handler_lines) == 1
        assert handler_lines[0]["logger"] == f"bgworker.job.{event.file_type}"
        assert handler_lines[0]["attempt"] == 1
    for event in jobs:
        about = [r for r in lines if str(event.id) in r["message"]]
        assert len(about) >= 2, about  # started, ready (and the retry for flaky)
        for record in about:
            assert record["request_id"] == str(event.id), record
            assert record["file_type"] == event.file_type, record
            assert record["worker_id"] == w.worker_id, record
            assert {"time", "level", "logger"} <= set(record), record
        attempts = {r.get("attempt") for r in about if "attempt" in r["message"]}
        assert None not in attempts
    flaky_attempts = {r["attempt"] for r in lines if r.get("request_id") == str(flaky.id)}
    assert {1, 2} <= flaky_attempts
    # The worker's own lines are not about a job and say so by carrying no job fields.
    start = [
        r for r in lines if "consuming" in r["message"] and r["logger"] == "bgworker.worker.pool"
    ]
    assert start and all("request_id" not in r for r in start)


def test_text_stays_the_default() -> None:
    assert settings_mod.Settings().log_format == "text"
    record = logging.LogRecord("bgworker.x", logging.INFO, __file__, 1, "hello %s", ("a",), None)
    assert logs.formatter("text").format(record).endswith("INFO bgworker.x: hello a")
