"""Logging setup, and the job fields every log line about a job carries.

A job runs in its own asyncio task, which has its own copy of the context (PEP 567:
``create_task`` copies it), so :func:`bind` there labels that job's lines only: its own,
the handler's, the store's and the heartbeat's (a task made inside copies it again). A
synchronous handler's thread gets the job's context explicitly (``handlers.Execution``).

``BGWORKER_LOG_FORMAT=json`` writes one JSON object a line (python-json-logger) with
``request_id``, ``file_type``, ``attempt`` and ``worker_id`` as fields; ``text`` (the
default) is the usual line for a terminal.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final, Literal

from pythonjsonlogger import json as json_logger

NO_JOB: Final[Mapping[str, object]] = MappingProxyType({})
# The fields of the job whose task (or handler thread) is logging; empty outside a job.
# Never mutated in place: bind() sets a new mapping, so a copied context keeps its own.
JOB_FIELDS: Final[contextvars.ContextVar[Mapping[str, object]]] = contextvars.ContextVar(
    "bgworker_job_fields", default=NO_JOB
)
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JSON_FORMAT: Final = "%(levelname)s %(name)s %(message)s"

Format = Literal["text", "json"]


def bind(**fields: object) -> None:
    """Add job fields to the current context (a job task's own: see the module doc)."""
    JOB_FIELDS.set({**JOB_FIELDS.get(), **fields})


def about(request_id: object) -> dict[str, object]:
    """``extra=`` for a line about a request logged outside its job's task (the outbox)."""
    return {"request_id": str(request_id)}


class JobFields(logging.Filter):
    """Copies the current job's fields onto each record (a record's own extra wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in JOB_FIELDS.get().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


def formatter(fmt: Format) -> logging.Formatter:
    if fmt == "json":
        return json_logger.JsonFormatter(
            JSON_FORMAT,
            # RFC 3339 in UTC, from the record's own creation time.
            timestamp="time",
            rename_fields={"levelname": "level", "name": "logger"},
            # ASCII only: a message may hold a request's filename or error text, and a raw
            # U+2028/U+2029 (valid in JSON) splits the line for readers that honour Unicode
            # line breaks (Python's str.splitlines), so escape everything non-ASCII.
            json_ensure_ascii=True,
        )
    return logging.Formatter(TEXT_FORMAT)


def configure(level: str, fmt: Format) -> None:
    """One stderr handler on the root logger, replacing any (``basicConfig(force=True)``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(fmt))
    handler.addFilter(JobFields())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
