"""Operator tools: ``bgworker clean`` (expired and orphaned files, retention), ``forget``
(erasure), ``relay`` (the producer outbox) and the dead-letter queue."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bgworker import settings as settings_mod


async def run(settings: settings_mod.Settings, args: argparse.Namespace) -> int:
    """``bgworker clean``, ``forget`` or ``relay``: each imports only what it uses."""
    from bgworker.ops import cleanup, erasure, relay

    runs = {"clean": cleanup.run, "forget": erasure.run, "relay": relay.run}
    return await runs[args.command](settings, args)
