"""`bgworker clean`: expired files (with leeway) and orphans go; live files stay."""

from __future__ import annotations

import os
import time
import uuid

from bgworker import cleanup, storage, store
from bgworker import settings as settings_mod
from tests.helpers import Publish, StartWorker, get_row, stored_path, wait_for_status


async def _expire(db: store.Store, request_id: uuid.UUID, seconds_ago: float) -> None:
    # The clock is the one thing we fake: move the row's expiry into the past.
    await db.pool.execute(
        "UPDATE bgworker_requests SET expires_at = now() - make_interval(secs => $2) WHERE id = $1",
        request_id,
        seconds_ago,
    )


async def test_clean_removes_expired_past_leeway_and_old_orphans(
    db: store.Store, publish: Publish, start_worker: StartWorker, settings: settings_mod.Settings
) -> None:
    await start_worker()
    old = await publish("blob", {"size": 5000, "seed": 1})
    recent = await publish("blob", {"size": 6000, "seed": 2})
    live = await publish("blob", {"size": 7000, "seed": 3})
    rows = {e.id: await wait_for_status(db, e.id, "ready") for e in (old, recent, live)}
    await _expire(db, old.id, 7200)
    await _expire(db, recent.id, 60)  # within the 3600 s leeway: kept for late downloads
    files = storage.LocalStorage(settings.storage_dir)
    orphan = files.path("ab/abababab-abab-abab-abab-abababababab." + "0" * 32)
    young_orphan = files.path("cd/cdcdcdcd-cdcd-cdcd-cdcd-cdcdcdcdcdcd." + "1" * 32)
    for path in (orphan, young_orphan):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 10)
    day_ago = time.time() - 2 * 86400
    os.utime(orphan, (day_ago, day_ago))
    for row in rows.values():  # stored files are old too: only references protect them
        os.utime(stored_path(files, row), (day_ago, day_ago))

    dry = await cleanup.clean(db, files, dry_run=True)
    assert (dry.expired, dry.orphans) == (1, 1)
    assert dry.bytes_freed == 5000 + 10  # what the real run below frees
    assert stored_path(files, rows[old.id]).exists() and orphan.exists()

    report = await cleanup.clean(db, files)
    assert (report.expired, report.orphans) == (1, 1)
    assert report.bytes_freed == 5000 + 10
    assert not stored_path(files, rows[old.id]).exists()
    assert not orphan.exists()
    assert young_orphan.exists()  # may be an attempt finalizing right now
    assert stored_path(files, rows[recent.id]).exists()
    assert stored_path(files, rows[live.id]).exists()
    assert (await get_row(db, old.id)).status == "expired"
    assert (await get_row(db, recent.id)).status == "ready"
    assert (await cleanup.clean(db, files)).expired == 0  # idempotent
