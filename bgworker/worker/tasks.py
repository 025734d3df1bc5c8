"""Stopping a group of asyncio tasks: the pool's side tasks at shutdown, and the jobs a
drain could not wait for."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def cancel_all(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel every task, then wait for each: none is left running, and an exception one
    raises while it stops is its own business (it was told to stop), not the caller's."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
