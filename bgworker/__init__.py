"""bgworker: build files in the background and hand them out over signed, expiring links.

The public names below are imported on first use (PEP 562), not with the package: every
``bgworker.x`` import runs this file first, and importing them all here made the command
line load aio-pika, aiohttp and the metrics before it had parsed ``--help``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from bgworker.contract.events import FileFailed, FileReady, FileRequested, Requester
    from bgworker.handlers import JobContext, PermanentError, Registry
    from bgworker.links.tokens import status_url
    from bgworker.messaging.publisher import Publisher, SyncPublisher
    from bgworker.settings import Settings

# Each public name and the module that defines it.
_EXPORTS: Final = {
    "FileFailed": "contract.events",
    "FileReady": "contract.events",
    "FileRequested": "contract.events",
    "Requester": "contract.events",
    "JobContext": "handlers",
    "PermanentError": "handlers",
    "Registry": "handlers",
    "Publisher": "messaging.publisher",
    "SyncPublisher": "messaging.publisher",
    "Settings": "settings",
    "status_url": "links.tokens",
}

__all__ = [
    "FileFailed",
    "FileReady",
    "FileRequested",
    "JobContext",
    "PermanentError",
    "Publisher",
    "Registry",
    "Requester",
    "Settings",
    "SyncPublisher",
    "__version__",
    "status_url",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'bgworker' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"bgworker.{module}"), name)
    globals()[name] = value  # once: later lookups find it without this function
    return value
