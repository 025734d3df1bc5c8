"""`bgworker clean`: expired files (with leeway) and orphans go; live files stay. On both
storage backends (S3's dangling multipart uploads: tests/integration/test_s3.py)."""

from __future__ import annotations

import asyncio
import math
import time
import uuid

import pytest

from bgworker import settings as settings_mod
from bgworker import storage, store
from bgworker.ops import cleanup
from tests.helpers import Publish, StartWorker, get_row, stored_keys, wait_for_status

pytestmark = pytest.mark.both_storages


async def _expire(db: store.Store, request_id: uuid.UUID, seconds_ago: float) -> None:
    # The clock is the one thing we fake: move the row's expiry into the past.
    await db.pool.execute(
        "UPDATE bgworker_requests SET expires_at = now() - make_interval(secs => $2) WHERE id = $1",
        request_id,
        seconds_ago,
    )


async def _put(files: storage.Storage, key: str, data: bytes) -> None:
    writer = files.writer(key)
    await writer.write(data)
    await writer.finish()


async def test_clean_removes_expired_past_leeway_and_old_orphans(
    db: store.Store, publish: Publish, start_worker: StartWorker, settings: settings_mod.Settings
) -> None:
    await start_worker()
    old = await publish("blob", {"size": 5000, "seed": 1})
    recent = await publish("blob", {"size": 6000, "seed": 2})
    live = await publish("blob", {"size": 7000, "seed": 3})
    rows = {e.id: await wait_for_status(db, e.id, "ready") for e in (old, recent, live)}
    keys = {i: str(row.storage_key) for i, row in rows.items()}
    await _expire(db, old.id, 7200)
    await _expire(db, recent.id, 60)  # within the 3600 s leeway: kept for late downloads
    orphan = "ab/abababab-abab-abab-abab-abababababab." + "0" * 32
    young_orphan = "cd/cdcdcdcd-cdcd-cdcd-cdcd-cdcdcdcdcdcd." + "1" * 32
    async with storage.opened(settings) as files:
        await _put(files, orphan, b"x" * 10)
        # The stored files and the orphan are older than `cutoff`, the young orphan is not.
        # Neither clock can be faked (S3 stamps LastModified itself, in whole seconds), so
        # the cutoff is the next whole second and the young orphan is written a second after
        # it: clean computes its own cutoff from `age()` a moment later, within that second.
        cutoff = math.floor(time.time()) + 1
        await asyncio.sleep(cutoff + 1 - time.time())
        await _put(files, young_orphan, b"y" * 10)

        def age() -> float:  # stored files are old too: only references protect them
            return time.time() - cutoff

        dry = await cleanup.clean(db, files, dry_run=True, orphan_age_seconds=age())
        assert (dry.expired, dry.orphans) == (1, 1)
        assert dry.bytes_freed == 5000 + 10  # what the real run below frees
        assert await stored_keys(settings) == sorted([*keys.values(), orphan, young_orphan])

        report = await cleanup.clean(db, files, orphan_age_seconds=age())
        assert (report.expired, report.orphans) == (1, 1)
        assert report.bytes_freed == 5000 + 10
        # Gone: the expired file and the old orphan. Kept: the young orphan (it may be an
        # attempt finalizing right now), the file within the leeway and the live one.
        assert await stored_keys(settings) == sorted([keys[recent.id], keys[live.id], young_orphan])
        assert (await get_row(db, old.id)).status == "expired"
        assert (await get_row(db, recent.id)).status == "ready"
        assert (await cleanup.clean(db, files, orphan_age_seconds=age())).expired == 0
