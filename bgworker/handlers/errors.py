"""What ends a handler's attempt early: the errors a handler raises and those raised inside
it, and what ``ctx.check()`` returns when the attempt goes on. Re-exported by ``handlers``
(``handlers.PermanentError``...), where handler code finds them."""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from typing import Any, Final


class PermanentError(Exception):
    """Raised by a handler when retrying cannot help (bad criteria...): straight to failed."""


class UnknownFileTypeError(LookupError):
    pass


class StoppedError(Exception):
    """Raised inside a handler, by ``ctx.check()`` (or a synchronous handler's
    ``out.write``), once its attempt has ended (time limit, cancel, lease lost, worker
    shutting down). Let it propagate: nothing the handler does afterwards is kept."""


class LifespanError(Exception):
    """A registry's lifespan could not open its resources, so the worker cannot start
    (``__cause__`` is what it raised)."""


class TimeLimitError(StoppedError):
    """The handler ran past its time limit. It is the attempt's error (error_class
    ``TimeLimitError``), so the attempt is retried or failed by the usual rules."""

    def __init__(self, limit: float) -> None:
        super().__init__(f"exceeded its time limit of {float(limit)} s")
        self.limit = limit


class Checked:
    """What ``ctx.check()`` returns when the attempt goes on: awaiting it gives the event
    loop one turn, so a CPU-bound async handler lets heartbeats, other jobs, a cancel or
    its time limit in (asyncio delivers a cancellation only at an await)."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return asyncio.sleep(0).__await__()


CHECKED: Final = Checked()
