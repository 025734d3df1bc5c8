"""Settings, log records and trace headers, without services: hostile trace headers from
producers never break a delivery, JSON lines keep a record's own fields."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bgworker import settings as settings_mod
from bgworker.cli import arguments, main
from bgworker.messaging import wire
from bgworker.observe import logs, tracing


def test_metrics_port_flag_and_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings_mod.Settings().metrics.port is None  # no endpoint unless asked
    monkeypatch.setenv("BGWORKER_METRICS__HOST", "0.0.0.0")
    monkeypatch.setenv("BGWORKER_METRICS__PORT", "9100")
    settings = settings_mod.Settings()
    assert (settings.metrics.host, settings.metrics.port) == ("0.0.0.0", 9100)
    args = arguments.parser().parse_args(["worker", "--metrics-port", "9200"])
    assert main._apply_flags(settings, args).metrics.port == 9200
    assert settings.web.host == "127.0.0.1"  # the worker's metrics no longer use it


def test_log_format_is_text_or_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BGWORKER_LOG_FORMAT", "yaml")
    with pytest.raises(ValueError, match="log_format"):
        settings_mod.Settings()


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.formatter("json"))
    handler.addFilter(logs.JobFields())
    logger = logging.getLogger("bgworker.test-observability")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, out
    logger.removeHandler(handler)


def test_json_line_has_bound_fields_and_a_records_own_win(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, out = captured
    token = logs.JOB_FIELDS.set({})
    try:
        logs.bind(request_id="a", file_type="t", worker_id="w")
        logs.bind(attempt=2)
        logger.info("one \u2028 %s", 'quote"')
        logger.warning("two", extra=logs.about("b"))
    finally:
        logs.JOB_FIELDS.reset(token)
    logger.info("three")
    one, two, three = (json.loads(line) for line in out.getvalue().splitlines())
    assert one["message"] == 'one \u2028 quote"'
    assert (one["request_id"], one["file_type"], one["worker_id"], one["attempt"]) == (
        "a",
        "t",
        "w",
        2,
    )
    assert two["request_id"] == "b" and two["level"] == "WARNING"
    assert "request_id" not in three
    assert one["time"].endswith("+00:00")


header_values = st.one_of(
    st.none(),
    st.integers(),
    st.binary(max_size=300),
    st.text(max_size=300),
    st.lists(st.integers(), max_size=3),
)


@given(st.dictionaries(st.sampled_from([wire.TRACEPARENT, wire.TRACESTATE, "x"]), header_values))
def test_trace_headers_from_anyone_give_text_only(headers: dict[str, Any]) -> None:
    found = tracing.from_headers(headers)
    assert set(found) <= {wire.TRACEPARENT, wire.TRACESTATE}
    assert all(isinstance(v, str) for v in found.values())


def test_tracing_off_is_a_no_op() -> None:
    assert not tracing.enabled()
    with tracing.span("x", parent={"traceparent": "garbage"}):
        assert tracing.carrier() == {}
    message = wire.request({"a": 1}, "id", trace=tracing.carrier())
    assert message.headers == {}
