"""What a download answers to its conditional and Range headers, decided once for every
backend (RFC 9110 sections 13 and 14): the whole file, one range of it, not modified, or
a range it cannot satisfy. Pure: headers and the representation's validator and size in,
a decision out; ``delivery`` sends it with the storage's byte source.

What it keeps of the RFC, where the RFC lets a server choose:
- ``If-None-Match`` with the ETag (weak comparison, section 13.1.2) or ``*``: 304, for GET
  and HEAD.
- ``Range`` only on GET, only in ``bytes``, one range only: several ranges, another unit,
  a form that does not parse, or a Range on HEAD get the whole file (a server MAY ignore
  Range, section 14.2; a 416 for a satisfiable multi-range would be wrong).
- ``If-Range`` keeps the range only when it is our ETag, compared strongly (section
  13.1.5): a weak tag, a stale one or a date get the whole file, never bytes of another
  representation.
- ``bytes=-0`` asks for no byte, and a first byte at or past the end names none: 416.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar, Final

# One range (section 14.1.1): "first-[last]" or "-suffix". 19 digits: any size a file can
# have, and int() never meets a hostile 10,000-digit number.
_ONE_RANGE: Final = re.compile(r"(?i:bytes)=(?:(\d{1,19})-(\d{0,19})|-(\d{1,19}))", re.ASCII)


@dataclass(frozen=True)
class Whole:
    """200: the whole file (HEAD: its headers)."""

    status: ClassVar[int] = 200


@dataclass(frozen=True)
class Part:
    """206: bytes ``start`` to ``end``, both included, of a file of ``size`` bytes."""

    start: int
    end: int
    size: int
    status: ClassVar[int] = 206

    @property
    def content_range(self) -> str:
        return f"bytes {self.start}-{self.end}/{self.size}"

    @property
    def length(self) -> int:
        return self.end - self.start + 1


@dataclass(frozen=True)
class NotModified:
    """304: the client's copy is current."""

    status: ClassVar[int] = 304


@dataclass(frozen=True)
class Unsatisfiable:
    """416: the range names no byte of a file of ``size`` bytes."""

    size: int
    status: ClassVar[int] = 416

    @property
    def content_range(self) -> str:
        return f"bytes */{self.size}"


Decision = Whole | Part | NotModified | Unsatisfiable


def decide(
    method: str,
    *,
    range_: str | None,
    if_range: str | None,
    if_none_match: str | None,
    etag: str,
    size: int,
) -> Decision:
    """The answer to a GET or HEAD of a file whose strong, quoted ETag is ``etag``."""
    if if_none_match is not None and _matches_weakly(if_none_match, etag):
        return NotModified()
    if method != "GET" or range_ is None:
        return Whole()
    if if_range is not None and if_range.strip() != etag:
        return Whole()
    wanted = range_.strip()
    found = _ONE_RANGE.fullmatch(wanted) if wanted.isascii() else None
    if found is None:
        return Whole()
    first, last, suffix = found.groups()
    if suffix is not None:
        length = int(suffix)
        if length == 0 or size == 0:
            return Unsatisfiable(size)
        return Part(max(0, size - length), size - 1, size)
    start = int(first)
    if last and int(last) < start:
        return Whole()  # not a valid range (section 14.1.1): ignored
    if start >= size:
        return Unsatisfiable(size)
    return Part(start, min(int(last), size - 1) if last else size - 1, size)


def _matches_weakly(header: str, etag: str) -> bool:
    """Section 13.1.2: ``*`` matches any current file; a tag matches when its opaque part
    equals ours, weak or not."""
    tags = {tag.strip() for tag in header.split(",")}
    return "*" in tags or etag in {tag.removeprefix("W/") for tag in tags}
