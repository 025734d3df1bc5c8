"""Which letters an action applies to: ids and filters (file type, error class, reason,
age of the last death), combined with AND."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from bgworker.ops.deadletters import letters

_AGE_RE: Final = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_AGE_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_age(text: str) -> timedelta:
    """``90s``, ``15m``, ``2h``, ``3d``, ``1w`` -> timedelta."""
    match = _AGE_RE.match(text.strip())
    if not match:
        raise ValueError(f"not an age: {text!r} (use e.g. 30s, 15m, 2h, 3d, 1w)")
    return timedelta(seconds=float(match[1]) * _AGE_UNITS[match[2]])


@dataclass(frozen=True)
class Selection:
    """Which letters an action applies to: ids and filters combine with AND."""

    ids: frozenset[str] = frozenset()
    file_type: str | None = None
    error_class: str | None = None
    reason: str | None = None
    older_than: timedelta | None = None
    newer_than: timedelta | None = None
    everything: bool = False

    @property
    def is_empty(self) -> bool:
        """Nothing asked for: destructive actions refuse this (no accidental --all)."""
        return not (
            self.everything
            or self.ids
            or self.file_type
            or self.error_class
            or self.reason
            or self.older_than
            or self.newer_than
        )

    def matches(self, letter: letters.Letter, now: datetime) -> bool:
        if self.ids and letter.key not in self.ids:
            return False
        if self.file_type is not None and letter.file_type != self.file_type:
            return False
        if self.error_class is not None and letter.error_class != self.error_class:
            return False
        if self.reason is not None and letter.reason != self.reason:
            return False
        age = letter.age(now)
        if self.older_than is not None and (age is None or age < self.older_than):
            return False
        return not (self.newer_than is not None and (age is None or age > self.newer_than))
