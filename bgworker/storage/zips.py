"""One ZIP of several stored files, laid out ahead and streamed on the fly.

Stored (method 0, never recompressed), so every offset is known from the names and sizes
alone: ``Layout`` gives the archive's length before a byte is read (Content-Length, HEAD,
Range), ZIP64 records where a size or an offset needs them (a part over 4 GiB, an archive
past 4 GiB), and fixed fields (one timestamp, the attributes) make the bytes the same on
every request, so a Range resumed later continues the same archive. Each entry's CRC-32 is
computed while its bytes go by and written after them in a data descriptor (bit 3), so
nothing is buffered: memory is one chunk. A Range reads only what it needs: the bytes of the
entries it covers, and the whole of an entry only when the range covers the CRC after it
(its descriptor, or the central directory at the end, which needs every entry's) and the
CRC is not known yet (a caller records what a stream computed, ``on_crc``, and passes it in
``Member.crc32`` later).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from bgworker.storage import base

_MAX32: Final = 0xFFFFFFFF
_MAX16: Final = 0xFFFF
_FLAGS: Final = 0x0808  # bit 3: sizes and CRC in a data descriptor; bit 11: UTF-8 names
_UNIX_FILE: Final = 0o100644 << 16


@dataclass(frozen=True)
class Member:
    name: str
    size: int
    key: str  # its storage key
    etag: str  # quoted sha256, as the row recorded it
    crc32: int | None = None  # when known (recorded by an earlier stream): never read for it


@dataclass(frozen=True)
class _Entry:
    member: Member
    offset: int  # of its local header
    name: bytes
    zip64: bool  # its size needs ZIP64 fields

    @property
    def header_size(self) -> int:
        return 30 + len(self.name) + (20 if self.zip64 else 0)

    @property
    def data_start(self) -> int:
        return self.offset + self.header_size

    @property
    def data_end(self) -> int:  # exclusive
        return self.data_start + self.member.size

    @property
    def end(self) -> int:  # exclusive: after its data descriptor
        return self.data_end + (24 if self.zip64 else 16)


def _dos_time(moment: datetime) -> tuple[int, int]:
    year = min(max(moment.year, 1980), 2107)
    date = ((year - 1980) << 9) | (moment.month << 5) | moment.day
    time = (moment.hour << 11) | (moment.minute << 5) | (moment.second // 2)
    return time, date


class Layout:
    """Where every byte of the archive of ``members`` (in order, names unique) lies."""

    def __init__(self, members: list[Member], modified: datetime) -> None:
        self.time, self.date = _dos_time(modified)
        self.entries: list[_Entry] = []
        offset = 0
        for member in members:
            entry = _Entry(member, offset, member.name.encode(), member.size >= _MAX32)
            self.entries.append(entry)
            offset = entry.end
        self.directory_offset = offset
        self.directory_size = sum(46 + len(e.name) + len(self._extra(e)) for e in self.entries)
        self.zip64_end = (
            offset >= _MAX32 or self.directory_size >= _MAX32 or len(self.entries) >= _MAX16
        )
        self.size = offset + self.directory_size + (56 + 20 if self.zip64_end else 0) + 22

    def _extra(self, entry: _Entry) -> bytes:
        fields = b""
        if entry.zip64:
            fields += struct.pack("<QQ", entry.member.size, entry.member.size)
        if entry.offset >= _MAX32:
            fields += struct.pack("<Q", entry.offset)
        return struct.pack("<HH", 1, len(fields)) + fields if fields else b""

    def local_header(self, entry: _Entry) -> bytes:
        version = 45 if entry.zip64 else 20
        sizes = _MAX32 if entry.zip64 else 0
        extra = struct.pack("<HHQQ", 1, 16, 0, 0) if entry.zip64 else b""
        fixed = struct.pack(
            "<IHHHHHIIIHH", 0x04034B50, version, _FLAGS, 0, self.time, self.date, 0,
            sizes, sizes, len(entry.name), len(extra),
        )  # fmt: skip
        return fixed + entry.name + extra

    def descriptor(self, entry: _Entry, crc: int) -> bytes:
        size = entry.member.size
        if entry.zip64:
            return struct.pack("<IIQQ", 0x08074B50, crc, size, size)
        return struct.pack("<IIII", 0x08074B50, crc, size, size)

    def directory(self, crcs: list[int]) -> bytes:
        out = bytearray()
        for entry, crc in zip(self.entries, crcs, strict=True):
            extra = self._extra(entry)
            needs64 = entry.zip64 or entry.offset >= _MAX32
            size = _MAX32 if entry.zip64 else entry.member.size
            out += struct.pack(
                "<IHHHHHHIIIHHHHHII", 0x02014B50, (3 << 8) | 45, 45 if needs64 else 20,
                _FLAGS, 0, self.time, self.date, crc, size, size, len(entry.name),
                len(extra), 0, 0, 0, _UNIX_FILE, min(entry.offset, _MAX32),
            )  # fmt: skip
            out += entry.name + extra
        count = len(self.entries)
        if self.zip64_end:
            end64 = self.directory_offset + self.directory_size
            out += struct.pack(
                "<IQHHIIQQQQ", 0x06064B50, 44, (3 << 8) | 45, 45, 0, 0, count, count,
                self.directory_size, self.directory_offset,
            )  # fmt: skip
            out += struct.pack("<IIQI", 0x07064B50, 0, end64, 1)
        out += struct.pack(
            "<IHHHHIIH", 0x06054B50, 0, 0, min(count, _MAX16), min(count, _MAX16),
            min(self.directory_size, _MAX32), min(self.directory_offset, _MAX32), 0,
        )  # fmt: skip
        return bytes(out)


Opener = Callable[[Member], Awaitable[base.Source]]
# Told each CRC-32 a stream computed by reading a whole member, to record it.
OnCrc = Callable[[Member, int], Awaitable[None]]


def _clip(data: bytes, at: int, start: int, end: int) -> bytes:
    """The part of ``data`` (lying at offset ``at``) within bytes ``start``..``end``."""
    return data[max(start - at, 0) : max(end + 1 - at, 0)]


async def stream(
    layout: Layout,
    open_source: Opener,
    start: int,
    end: int,
    chunk_size: int,
    on_crc: OnCrc | None = None,
) -> AsyncIterator[bytes]:
    """Bytes ``start`` to ``end`` (both included) of the archive, reading each stored file
    through ``open_source`` only where the range needs it: its bytes in the range, or all of
    them when the range needs its CRC-32 and the member does not carry it (``on_crc`` is then
    told the CRC, to record it)."""
    crcs: list[int] = []
    whole_tail = end >= layout.directory_offset  # the directory needs every CRC
    for entry in layout.entries:
        if entry.offset > end and not whole_tail:
            return
        if head := _clip(layout.local_header(entry), entry.offset, start, end):
            yield head
        size = entry.member.size
        needs_crc = whole_tail or (entry.data_end <= end and entry.end > start)
        covers = entry.data_start <= end and entry.data_end > start
        known = entry.member.crc32
        reads_all = needs_crc and known is None
        crc = 0
        if size and (reads_all or covers):
            first = 0 if reads_all else max(start - entry.data_start, 0)
            last = size - 1 if reads_all else min(end - entry.data_start, size - 1)
            source = await open_source(entry.member)
            at = entry.data_start + first
            async for chunk in source.read(first, last, chunk_size):
                crc = zlib.crc32(chunk, crc)
                if part := _clip(chunk, at, start, end):
                    yield part
                at += len(chunk)
            if at != entry.data_start + last + 1:
                raise base.RangeNotSatisfiableError(
                    f"{entry.member.key}: fewer bytes than recorded"
                )
            if reads_all and on_crc is not None:
                await on_crc(entry.member, crc)
        if known is not None:
            crc = known
        crcs.append(crc)
        if needs_crc and (tail := _clip(layout.descriptor(entry, crc), entry.data_end, start, end)):
            yield tail
    if whole_tail:
        yield _clip(layout.directory(crcs), layout.directory_offset, start, end)
