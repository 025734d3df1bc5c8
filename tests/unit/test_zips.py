"""The streamed stored ZIP (storage.zips): its length is known ahead, every range of it is the
same slice of the whole, Python's zipfile reads it, and ZIP64 is used where sizes or offsets
pass 4 GiB (checked without holding 5 GiB anywhere: the data of the big part is zeros that a
virtual file serves back)."""

from __future__ import annotations

import io
import zipfile
from collections.abc import AsyncGenerator
from datetime import UTC, datetime
from typing import Final

from hypothesis import given
from hypothesis import strategies as st

from bgworker.storage import base, zips

MODIFIED: Final = datetime(2026, 12, 7, 15, 0, 0, tzinfo=UTC)
ZEROS: Final = bytes(1 << 20)


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self.data = data

    async def read(self, start: int, end: int, chunk_size: int) -> AsyncGenerator[bytes, None]:
        for at in range(start, end + 1, chunk_size):
            yield self.data[at : min(at + chunk_size, end + 1)]


class _Zeros:
    async def read(self, start: int, end: int, chunk_size: int) -> AsyncGenerator[bytes, None]:
        at = start
        while at <= end:
            n = min(len(ZEROS), end + 1 - at)
            yield ZEROS[:n]
            at += n


def _layout(files: dict[str, bytes]) -> zips.Layout:
    members = [zips.Member(name, len(data), name, '"x"') for name, data in files.items()]
    return zips.Layout(members, MODIFIED)


async def _read(files: dict[str, bytes], start: int, end: int, chunk: int = 997) -> bytes:
    async def opened(member: zips.Member) -> base.Source:
        return _Bytes(files[member.key])  # type: ignore[return-value]

    return b"".join([c async for c in zips.stream(_layout(files), opened, start, end, chunk)])


FILES: Final = {"a.csv": b"x,y\n1,2\n" * 500, "empty": b"", "é ü.bin": bytes(range(256)) * 300}


async def test_the_whole_archive_has_the_length_laid_out_and_unzips_to_the_files() -> None:
    layout = _layout(FILES)
    whole = await _read(FILES, 0, layout.size - 1)
    assert len(whole) == layout.size
    archive = zipfile.ZipFile(io.BytesIO(whole))
    assert archive.testzip() is None
    assert {name: archive.read(name) for name in archive.namelist()} == FILES
    assert all(i.compress_type == zipfile.ZIP_STORED for i in archive.infolist())
    assert await _read(FILES, 0, layout.size - 1, chunk=64) == whole  # the same bytes again


@given(st.data())
async def test_every_range_is_the_same_slice_of_the_whole(data: st.DataObject) -> None:
    layout = _layout(FILES)
    whole = await _read(FILES, 0, layout.size - 1)
    start = data.draw(st.integers(0, layout.size - 1))
    end = data.draw(st.integers(start, layout.size - 1))
    assert await _read(FILES, start, end, data.draw(st.integers(1, 5000))) == whole[start : end + 1]


class _Virtual(io.RawIOBase):
    """The archive as a file: zeros where the big part's data lies, kept bytes elsewhere."""

    def __init__(self, size: int, kept: dict[int, bytes]) -> None:
        self.size, self.kept, self.at = size, kept, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self.at = {0: offset, 1: self.at + offset, 2: self.size + offset}[whence]
        return self.at

    def tell(self) -> int:
        return self.at

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        n = max(0, min(len(buffer), self.size - self.at))
        out = bytearray(n)
        for offset, chunk in self.kept.items():
            lo, hi = max(offset, self.at), min(offset + len(chunk), self.at + n)
            if lo < hi:
                out[lo - self.at : hi - self.at] = chunk[lo - offset : hi - offset]
        buffer[:n] = out
        self.at += n
        return n


async def test_a_part_over_4_gib_gets_zip64_and_zipfile_reads_the_directory() -> None:
    big = 4 * 1024**3 + 123
    members = [zips.Member("big.bin", big, "big", '"b"'), zips.Member("s.txt", 5, "s", '"s"')]
    layout = zips.Layout(members, MODIFIED)
    assert layout.entries[0].zip64 and layout.entries[1].offset > 0xFFFFFFFF
    assert layout.zip64_end

    async def opened(member: zips.Member) -> base.Source:
        return _Zeros() if member.key == "big" else _Bytes(b"hello")  # type: ignore[return-value]

    kept: dict[int, bytes] = {}
    at = 0
    data = range(layout.entries[0].data_start, layout.entries[0].data_end)
    async for chunk in zips.stream(layout, opened, 0, layout.size - 1, 1 << 20):
        if not (at in data and at + len(chunk) - 1 in data):
            kept[at] = chunk
        at += len(chunk)
    assert at == layout.size
    archive = zipfile.ZipFile(_Virtual(layout.size, kept))
    info = {i.filename: i for i in archive.infolist()}
    assert info["big.bin"].file_size == big and info["s.txt"].file_size == 5
    assert archive.read("s.txt") == b"hello"  # its CRC, after 4 GiB, checked by zipfile
    with archive.open("big.bin") as opened_big:
        assert opened_big.read(1000) == bytes(1000)


async def test_a_known_crc_spares_reading_the_member_for_the_directory() -> None:
    # The first whole stream tells each CRC; with them, the tail reads no member at all.
    layout = _layout(FILES)
    told: dict[str, int] = {}

    async def record(member: zips.Member, crc: int) -> None:
        told[member.key] = crc

    async def opened(member: zips.Member) -> base.Source:
        return _Bytes(FILES[member.key])  # type: ignore[return-value]

    whole = b"".join(
        [c async for c in zips.stream(layout, opened, 0, layout.size - 1, 999, record)]
    )
    assert set(told) == {"a.csv", "é ü.bin"}  # the empty member has nothing to read

    async def never(member: zips.Member) -> base.Source:
        raise AssertionError(f"{member.key} read")

    known = [
        zips.Member(m.name, m.size, m.key, m.etag, told.get(m.key, 0))
        for m in (e.member for e in layout.entries)
    ]
    again = zips.Layout(known, MODIFIED)
    start = again.directory_offset - 10  # the last descriptor and the directory
    tail = [c async for c in zips.stream(again, never, start, again.size - 1, 999)]
    assert b"".join(tail) == whole[start:]
