"""The bundle's ZIP (issue 23, part 1) against reading the same parts plainly: throughput and
peak Python memory of streaming a whole stored ZIP, a Range inside one part, and a Range at
the end (which reads every part for the CRCs of the central directory).

    .venv/bin/python -m bench.bundle_zip [--parts 3] [--mib 256] [--dir /var/tmp]

Parts are written once to a local storage directory (disk, not tmpfs, unless --dir says
so) and read back through the same ``Source`` a download uses; bytes go to a sink that only
counts them, so the numbers are the ZIP code's and the storage's, not a socket's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

from bgworker import storage
from bgworker.storage import zips

CHUNK = 256 * 1024


async def _write(files: storage.LocalStorage, size: int) -> zips.Member:
    key = storage.key_for(uuid.uuid4(), uuid.uuid4())
    writer = files.writer(key)
    block = os.urandom(1 << 20)
    for _ in range(size >> 20):
        await writer.write(block)
    written, digest = await writer.finish()
    return zips.Member(f"{key[3:15]}.bin", written, key, f'"{digest}"')


async def _measure(name: str, chunks: AsyncIterator[bytes]) -> tuple[str, int, float, int]:
    tracemalloc.start()
    began = time.perf_counter()
    count = 0
    async for chunk in chunks:
        count += len(chunk)
    seconds = time.perf_counter() - began
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return name, count, seconds, peak


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--parts", type=int, default=3)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-bundle-", dir=args.dir))
    try:
        files = storage.LocalStorage(root)
        files.ensure()
        members = [await _write(files, args.mib << 20) for _ in range(args.parts)]
        layout = zips.Layout(members, datetime.now(UTC))

        async def opened(member: zips.Member) -> storage.Source:
            return await files.source(member.key, size=member.size, etag=member.etag)

        async def plain() -> AsyncIterator[bytes]:
            for member in members:
                async for chunk in (await opened(member)).read(0, member.size - 1, CHUNK):
                    yield chunk

        await _measure("warm-up: the page cache holds the parts for every row", plain())
        middle = layout.entries[-1].data_start + members[-1].size // 2
        rows = [
            await _measure("parts read plainly", plain()),
            await _measure("whole ZIP", zips.stream(layout, opened, 0, layout.size - 1, CHUNK)),
            await _measure(
                "Range: 1 MiB inside the last part",
                zips.stream(layout, opened, middle, middle + (1 << 20) - 1, CHUNK),
            ),
            await _measure(
                "Range: the last 1 KiB (every CRC)",
                zips.stream(layout, opened, layout.size - 1024, layout.size - 1, CHUNK),
            ),
        ]
        print(f"{args.parts} parts x {args.mib} MiB, archive {layout.size} bytes, chunk {CHUNK}")
        print(f"{'what':<36}{'bytes sent':>14}{'seconds':>9}{'MiB/s read':>12}{'peak KiB':>10}")
        for name, count, seconds, peak in rows:
            # What was read from storage: every part, except for a Range inside one part.
            read = count if name.startswith("Range: 1 MiB") else sum(m.size for m in members)
            rate = read / seconds / (1 << 20)
            print(f"{name:<36}{count:>14}{seconds:>9.2f}{rate:>12.0f}{peak // 1024:>10}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
