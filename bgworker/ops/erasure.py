"""``bgworker forget --requester EMAIL`` or ``--tenant T`` (and ``POST /erasures``): erase
one person's data, or one tenant's.

In order, each step safe to run again:

1. PostgreSQL, one transaction (``store.erasure``): the person's requests become scrubbed
   placeholders (no event, address, file, error text), their attempts, effects (email
   payloads), dead-letter action records and accepted-but-unrecorded copies are deleted.
   A placeholder stays so a delivery still queued is acknowledged unbuilt.
2. Storage (local or S3, ``storage.Storage.delete``): the files those rows pointed to,
   unless another request's row still points to the same file (a dedupe reuse: the file is
   also that request's, and erasing one person must not take another's download).
3. The dead-letter queue: a scan (``ops.deadletters.queue``) acknowledges, and so removes,
   every letter of one of those requests or whose body or headers name the address (for a
   tenant: whose event counts against it); every other letter goes back to its place when
   the scan's channel closes.
4. An audit row (``bgworker_erasures``): counts and a salted hash of the address or tenant.

A second run finds nothing in PostgreSQL (the rows are scrubbed) and still removes, by
address, letters a failed first run left. Not reached: messages still in the work or retry
queues (their placeholders make workers drop them unbuilt), copies other systems received
(emails sent, FileReady events, webhooks), logs, and backups.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bgworker import settings as settings_mod
from bgworker import storage, store
from bgworker.observe import metrics
from bgworker.ops.deadletters import cli as deadletters_cli
from bgworker.ops.deadletters import queue
from bgworker.store import erasure

log = logging.getLogger(__name__)

Subject = erasure.Subject
# Characters an address may touch without ending: a match must not be part of a longer one
# (ann@example.com is not in joann@example.com nor in ann@example.com.au).
_BEFORE = r"(?<![A-Za-z0-9!#$%&'*+/=?^_`{|}~.-])"
_AFTER = r"(?![A-Za-z0-9-])(?!\.[A-Za-z0-9])"


@dataclass
class Report:
    requests: int = 0
    pending: int = 0
    files: int = 0
    effects: int = 0
    dead_letters: int = 0
    schedules: int = 0  # deleted, with their recorded periods
    audit_id: int | None = None
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def names(subject: Subject) -> re.Pattern[bytes]:
    """Whether bytes (a letter's body, its headers) name the subject's address."""
    return re.compile(
        (_BEFORE + re.escape(subject.value) + _AFTER).encode(), re.IGNORECASE | re.ASCII
    )


def _counts_against(tenant: str, body: bytes) -> bool:
    """Whether a letter's body is an event that counts against ``tenant`` (its tenant, else
    its requester's id: ``events.tenant_of``, read from the raw JSON since a dead letter
    need not be a valid event)."""
    try:
        event = json.loads(body)
    except ValueError:
        return False
    if not isinstance(event, dict):
        return False
    requester = event.get("requester")
    fallback = requester.get("id") if isinstance(requester, dict) else None
    return event.get("tenant", fallback) == tenant


def letter_matcher(subject: Subject) -> Callable[[bytes, bytes], bool]:
    """Whether a letter (body, headers) is the subject's, beyond its request ids."""
    if subject.kind == "tenant":
        return lambda body, _headers: _counts_against(subject.value, body)
    pattern = names(subject)
    return lambda body, headers: bool(pattern.search(body) or pattern.search(headers))


async def forget(
    db: store.Store,
    files: storage.Storage,
    dlq: queue.DeadLetterQueue | None,
    subject: Subject,
    *,
    actor: str,
) -> Report:
    """Erase ``subject`` everywhere bgworker keeps it (see the module doc)."""
    report = Report()
    erased = await db.erasure.erase(subject)
    report.requests, report.pending = len(erased.request_ids), len(erased.pending_ids)
    report.effects, report.schedules = erased.effects, erased.schedules
    keys = sorted(set(erased.storage_keys))
    # After the commit: a file another row still points to stays (a dedupe reuse).
    still_used = await db.maintenance.referenced_keys(keys) if keys else set()
    for key in keys:
        if key in still_used:
            continue
        try:
            if await files.delete(key):
                report.files += 1
        except Exception as exc:  # an orphan now: `bgworker clean` deletes it later
            report.errors.append(f"file {key}: {type(exc).__name__}: {exc}")
    if dlq is not None:
        try:
            ids = {str(i) for i in erased.request_ids + erased.pending_ids}
            report.dead_letters = await _erase_letters(dlq, ids, letter_matcher(subject))
        except queue.DlqError as exc:
            report.errors.append(f"dead letters: {exc} (run forget again)")
    report.audit_id, _ = await db.erasure.record(
        subject, actor=actor, erased=erased, files=report.files, dead_letters=report.dead_letters
    )
    for kind in ("requests", "pending", "files", "effects", "dead_letters", "schedules"):
        metrics.ERASED.labels(kind).inc(getattr(report, kind))
    # The log names the audit row, never the address.
    log.info("forget: erasure %s: %s", report.audit_id, report)
    return report


async def _erase_letters(
    dlq: queue.DeadLetterQueue, ids: set[str], matches: Callable[[bytes, bytes], bool]
) -> int:
    removed = 0
    async with contextlib.aclosing(dlq.scan()) as held:
        async for item in held:
            letter, message = item.letter, item.message
            headers = repr(message.headers or {}).encode("utf-8", "backslashreplace")
            if (
                (letter.request_id is not None and str(letter.request_id) in ids)
                or (message.message_id or "") in ids
                or matches(message.body, headers)
            ):
                await item.ack()
                removed += 1
    return removed


def parse_requester(value: str) -> Subject:
    """A ``--requester`` value: any text that holds an address (erasure must be possible
    for an address the contract would refuse today, since an older one may have let it in)."""
    if "@" not in value or not value.strip() or len(value) > 1000:
        raise ValueError("--requester must be an email address")
    return Subject.requester(value)


def parse_tenant(value: str) -> Subject:
    """A ``--tenant`` value, exactly as producers send it (or a requester's id, which is
    the tenant of a request that names none)."""
    if not value or len(value) > 1000:
        raise ValueError("--tenant must be 1 to 1000 characters")
    return Subject.tenant(value)


async def erase_with(
    settings: settings_mod.Settings, db: store.Store, subject: Subject, *, actor: str
) -> Report:
    """``forget`` with the deployment's storage and dead-letter queue (a queue no worker
    has declared yet holds no letters)."""
    url = settings.amqp_url.get_secret_value()
    async with storage.opened(settings) as files, contextlib.AsyncExitStack() as stack:
        dlq = queue.DeadLetterQueue(url, settings.namespace, settings.queue_type)
        try:
            await dlq.connect()
        except queue.DlqError as exc:
            if "does not exist" not in str(exc):
                raise
            return await forget(db, files, None, subject, actor=actor)
        stack.push_async_callback(dlq.__aexit__)
        return await forget(db, files, dlq, subject, actor=actor)


async def run(settings: settings_mod.Settings, args: argparse.Namespace) -> int:
    """``bgworker forget --requester EMAIL | --tenant T [--json]``."""
    try:
        subject = (
            parse_tenant(args.tenant)
            if args.tenant is not None
            else parse_requester(args.requester)
        )
    except ValueError as exc:
        print(f"bgworker forget: {exc}", file=sys.stderr)
        return 64
    async with store.opened(settings.database_url.get_secret_value()) as db:
        report = await erase_with(settings, db, subject, actor=deadletters_cli.actor())
    if args.json:
        print(json.dumps(report.to_json()))
    else:
        print(
            f"erased: {report.requests} request(s), {report.pending} not yet recorded, "
            f"{report.files} file(s), {report.effects} effect(s), {report.dead_letters} "
            f"dead letter(s), {report.schedules} schedule(s); audit row {report.audit_id}"
        )
        for error in report.errors:
            print(f"  not done: {error}", file=sys.stderr)
    return 1 if report.errors else 0
