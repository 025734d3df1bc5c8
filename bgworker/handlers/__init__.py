"""Handlers: file types, the code that builds them, and running that code.

The public face (``from bgworker import handlers``): the registry and its errors.
``execution`` (running handler code) is imported by those who run it.
"""

from bgworker.handlers.errors import (
    LifespanError,
    PermanentError,
    StoppedError,
    TimeLimitError,
    UnknownFileTypeError,
)
from bgworker.handlers.registry import (
    NO_RESOURCES,
    AsyncHandler,
    JobContext,
    Lifespan,
    Registration,
    Registry,
    SyncHandler,
    load,
    served_names,
    with_defaults,
)

__all__ = [
    "NO_RESOURCES",
    "AsyncHandler",
    "JobContext",
    "Lifespan",
    "LifespanError",
    "PermanentError",
    "Registration",
    "Registry",
    "StoppedError",
    "SyncHandler",
    "TimeLimitError",
    "UnknownFileTypeError",
    "load",
    "served_names",
    "with_defaults",
]
