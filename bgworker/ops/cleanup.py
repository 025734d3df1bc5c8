"""``bgworker clean``: delete expired files and files no request points to (and the
records of ``POST /requests`` that no POST needs any more), then prune what the retention
settings no longer keep (``ops.retention``).

Parity with dj-bgfiles' ``bgfiles clean --timeout --sleep --leeway``, without its swapped
arguments: ``leeway`` keeps recently expired files for last-minute downloads, ``timeout``
bounds the whole run, ``sleep`` pauses between deletions to spare the disk.

The same run for both backends (``storage.Storage``): for S3, the "temp parts" are
multipart uploads of attempts that died, aborted once older than ``orphan_age``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from dataclasses import dataclass, field

import prometheus_client

from bgworker import settings as settings_mod
from bgworker import storage, store
from bgworker.contract import retention as retention_settings
from bgworker.contract import states
from bgworker.observe import metrics
from bgworker.ops import retention
from bgworker.ops.deadletters import queue

log = logging.getLogger(__name__)

BATCH = 100


@dataclass
class CleanReport:
    expired: int = 0
    orphans: int = 0
    temp_parts: int = 0
    # Records of POST /requests that no POST needs any more (store.front_door).
    front_door: int = 0
    # Retention (ops.retention): pruned rows, scrubs and dead letters by kind.
    pruned: dict[str, int] = field(default_factory=dict)
    bytes_freed: int = 0
    stopped_early: bool = False
    errors: list[str] = field(default_factory=list)


@dataclass
class _Run:
    db: store.Store
    files: storage.Storage
    sleep_seconds: float
    dry_run: bool
    deadline: float | None
    report: CleanReport = field(default_factory=CleanReport)

    def out_of_time(self) -> bool:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.report.stopped_early = True
        return self.report.stopped_early

    async def remove(self, key: str) -> None:
        # What the real run would free: in a dry run the same files, sized, not removed.
        size = await self.files.size(key)
        if not self.dry_run and not await self.files.delete(key):
            size = 0  # gone meanwhile
        self.report.bytes_freed += size
        await self._pause()

    async def remove_part(self, part: str) -> None:
        if not self.dry_run:
            self.report.bytes_freed += await self.files.remove_part(part)
        await self._pause()

    async def _pause(self) -> None:
        if self.sleep_seconds and not self.dry_run:
            await asyncio.sleep(self.sleep_seconds)

    async def expired(self, leeway_seconds: float) -> None:
        if self.dry_run:
            keys = await self.db.maintenance.expirable_keys(leeway_seconds)
            self.report.expired = len(keys)
            for key in keys:
                if key:
                    await self.remove(key)
            return
        while not self.out_of_time():
            expired = await self.db.maintenance.expire_ready(leeway_seconds, BATCH)
            for item in expired:
                if item.storage_key:
                    await self.remove(item.storage_key)
                self.report.expired += 1
            if len(expired) < BATCH:
                return

    async def orphans(self, age_seconds: float) -> None:
        # Files of attempts that lost their lease or died between rename and commit. The
        # age threshold protects an attempt that is finalizing right now.
        stale = await self.files.stale(time.time() - age_seconds)
        keys = stale.keys
        for start in range(0, len(keys), 1000):
            if self.out_of_time():
                return
            batch = keys[start : start + 1000]
            referenced = await self.db.maintenance.referenced_keys(batch)
            for key in batch:
                if key not in referenced:
                    self.report.orphans += 1
                    await self.remove(key)
        for part in stale.parts:
            if self.out_of_time():
                return
            self.report.temp_parts += 1
            await self.remove_part(part)


async def clean(
    db: store.Store,
    files: storage.Storage,
    *,
    policy: retention_settings.RetentionSettings | None = None,
    dlq: queue.DeadLetterQueue | None = None,
    leeway_seconds: float = 3600,
    orphan_age_seconds: float = 86400,
    timeout_seconds: float | None = None,
    sleep_seconds: float = 0.0,
    dry_run: bool = False,
) -> CleanReport:
    deadline = time.monotonic() + timeout_seconds if timeout_seconds else None
    run = _Run(db, files, sleep_seconds, dry_run, deadline)
    await run.expired(leeway_seconds)
    await run.orphans(orphan_age_seconds)
    if not run.out_of_time():
        run.report.front_door = await db.front_door.prune(
            states.SUPERSEDABLE, orphan_age_seconds, dry_run=dry_run
        )
    if policy is not None and not run.out_of_time():
        run.report.pruned = await retention.prune(
            db,
            policy,
            dlq,
            dry_run=dry_run,
            out_of_time=run.out_of_time,
            pause_seconds=sleep_seconds,
        )
    log.info("clean: %s", run.report)
    return run.report


async def run(settings: settings_mod.Settings, args: argparse.Namespace) -> int:
    """``bgworker clean`` (its flags are in ``bgworker.cli.arguments``)."""
    async with (
        store.opened(
            settings.database_url.get_secret_value(), pooler=settings.database_pooler
        ) as db,
        storage.opened(settings) as files,
        contextlib.AsyncExitStack() as stack,
    ):
        dlq = None
        if not args.no_retention:
            dlq = await _dead_letters(settings, stack)
        report = await clean(
            db,
            files,
            policy=None if args.no_retention else settings.retention,
            dlq=dlq,
            leeway_seconds=args.leeway,
            orphan_age_seconds=args.orphan_age,
            timeout_seconds=args.timeout,
            sleep_seconds=args.sleep,
            dry_run=args.dry_run,
        )
    verb = "would remove" if args.dry_run else "removed"
    print(
        f"{verb}: {report.expired} expired file(s), {report.orphans} orphaned file(s), "
        f"{report.temp_parts} temp part(s), {report.front_door} front-door record(s); "
        f"{report.bytes_freed} bytes freed"
        + ("; stopped at --timeout" if report.stopped_early else "")
    )
    if report.pruned:
        print(f"{verb} (retention): " + ", ".join(f"{k} {n}" for k, n in report.pruned.items()))
    if args.metrics_file:
        # Written whole then renamed (prometheus_client does both): node_exporter's textfile
        # collector never reads half a file.
        prometheus_client.write_to_textfile(args.metrics_file, metrics.MAINTENANCE)
    return 0


async def _dead_letters(
    settings: settings_mod.Settings, stack: contextlib.AsyncExitStack
) -> queue.DeadLetterQueue | None:
    """The dead-letter queue, or None when no worker has declared it yet (no letters)."""
    dlq = queue.DeadLetterQueue(
        settings.amqp_url.get_secret_value(), settings.namespace, settings.queue_type
    )
    try:
        await dlq.connect()
    except queue.DlqError as exc:
        # A missing queue holds no letters; an unreachable broker must not stop the rest of
        # the cleaning: the letters wait for the next run.
        if "does not exist" not in str(exc):
            log.warning("clean: dead letters not pruned this time: %s", exc)
            print(f"dead letters not pruned: {exc}", file=sys.stderr)
        return None
    stack.push_async_callback(dlq.__aexit__)
    return dlq
