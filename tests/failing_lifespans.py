"""Registries whose lifespan cannot open (tests/acceptance/test_cli_errors.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from bgworker import handlers
from bgworker import settings as settings_mod

refused = handlers.Registry()
misconfigured = handlers.Registry()


@refused.lifespan
async def closed_port(settings: settings_mod.Settings) -> AsyncIterator[dict[str, Any]]:
    # A service the handlers need is not there: nothing listens on port 1.
    _reader, writer = await asyncio.open_connection("127.0.0.1", 1)
    writer.close()
    yield {}


@misconfigured.lifespan
async def no_token(settings: settings_mod.Settings) -> AsyncIterator[dict[str, Any]]:
    raise ValueError("REPORTS_API_TOKEN is not set")
    yield {}  # an async generator, as lifespans are written
