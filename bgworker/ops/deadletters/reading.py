"""Reading the dead-letter queue without changing it: the letters a selection matches, one
letter in full, and counts (``bgworker dlq list|show|stats``, the console's pages)."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bgworker.ops.deadletters import letters, queue, selection


async def matching(
    dlq: queue.DeadLetterQueue, chosen: selection.Selection | None = None
) -> AsyncIterator[letters.Letter]:
    """Summaries of the letters matching ``chosen`` (all by default); changes nothing."""
    now = datetime.now(UTC)
    async with contextlib.aclosing(dlq.scan()) as held:
        async for item in held:
            if chosen is None or chosen.matches(item.letter, now):
                yield item.letter


async def show(dlq: queue.DeadLetterQueue, key: str) -> dict[str, Any] | None:
    """The full detail of the first letter with this key (request id), or None."""
    async with contextlib.aclosing(dlq.scan()) as held:
        async for item in held:
            if item.letter.key == key:
                return letters.detail(item.message)
    return None


@dataclass
class Stats:
    total: int = 0
    by_group: Counter[tuple[str, str]] = field(default_factory=Counter)
    by_reason: Counter[str] = field(default_factory=Counter)
    oldest: datetime | None = None
    newest: datetime | None = None

    def add(self, letter: letters.Letter) -> None:
        self.total += 1
        self.by_group[(letter.file_type or "?", letter.error_class)] += 1
        self.by_reason[letter.reason] += 1
        if letter.last_death is not None:
            if self.oldest is None or letter.last_death < self.oldest:
                self.oldest = letter.last_death
            if self.newest is None or letter.last_death > self.newest:
                self.newest = letter.last_death

    def to_json(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "groups": [
                {"file_type": ft, "error_class": ec, "count": n}
                for (ft, ec), n in sorted(self.by_group.items(), key=lambda kv: -kv[1])
            ],
            "by_reason": dict(self.by_reason.most_common()),
            "oldest": letters.plain(self.oldest),
            "newest": letters.plain(self.newest),
        }


async def stats(dlq: queue.DeadLetterQueue, chosen: selection.Selection | None = None) -> Stats:
    out = Stats()
    async for letter in matching(dlq, chosen):
        out.add(letter)
    return out
