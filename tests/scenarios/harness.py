"""A scenario: a few hundred requests published at a steady pace while a fault plays out,
then everything they cause counted and checked.

Checked at the end of every scenario (``Report.check``): no request lost (each one
published ends ``ready`` or, meant to fail, ``failed``), no file built twice to completion
(the handler records every completed build with its attempt: exactly one at the attempt
the row committed; a build the fence refused is counted apart), one email per request by
Message-ID and no copy, one webhook per request by ``webhook-id`` and no copy, every outbox
row done, every file served with the right bytes, and all of it within a bound after the
fault ended. ``Report.line`` is the one-line summary the fault stage prints.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp

from bgworker import store
from bgworker.contract import events
from bgworker.messaging import broker, publisher
from tests.scenarios import handlers
from tests.scenarios.receivers import Mailbox, WebhookReceiver

# Whatever a producer may see while the broker is away: it publishes again until confirmed.
PUBLISH_ERRORS = (
    broker.PublishError,
    aio_pika.exceptions.AMQPError,
    ConnectionError,
    RuntimeError,
    TimeoutError,
)

# A producer that cannot publish for this long fails the scenario: the cluster (or the
# client's failover) stopped taking requests.
GIVE_UP_SECONDS = 60.0
# A long build: two leases of the scenarios (3 s) and then some, so it outlives a lease.
LONG_SECONDS = 8.0


@dataclass(frozen=True)
class Planned:
    event: events.FileRequested
    kind: str  # "ok", "flaky" (fails its first attempt) or "permanent" (fails for good)
    size: int
    seed: int

    @property
    def expected(self) -> str:
        return "failed" if self.kind == "permanent" else "ready"


def plan(
    n: int, *, seed: int = 0, seconds: tuple[float, float] = (0.2, 1.2), long_every: int = 0
) -> list[Planned]:
    """``n`` requests, each with a requester email: 5% meant to fail, 10% failing once, and
    with ``long_every`` one in that many built in LONG_SECONDS (longer than a lease)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind = "permanent" if i % 20 == 7 else "flaky" if i % 10 == 3 else "ok"
        size = rng.randrange(1024, 64 * 1024)
        criteria = {
            "kind": kind,
            "size": size,
            "seed": i,
            "seconds": LONG_SECONDS
            if long_every and i % long_every == 5
            else round(rng.uniform(*seconds), 2),
        }
        event = events.FileRequested(
            id=uuid.UUID(int=rng.getrandbits(128), version=4),
            file_type=handlers.FILE_TYPE,
            criteria=criteria,
            filename=f"scenario-{i}.bin",
            content_type="application/octet-stream",
            requester={"email": f"user{i}@example.com"},
        )
        out.append(Planned(event, kind, size, i))
    return out


@dataclass
class Producer:
    """Publishes until confirmed (a producer's duty), counting the tries that failed."""

    amqp_url: str
    namespace: str
    queue_type: str
    published: int = 0
    failed_tries: int = 0
    slowest: float = 0.0  # seconds, from the first try to the confirm
    _pub: publisher.Publisher | None = None

    async def publish(self, event: events.FileRequested) -> None:
        began = time.monotonic()
        try:
            await self._publish(event)
        finally:
            self.slowest = max(self.slowest, time.monotonic() - began)

    async def _publish(self, event: events.FileRequested) -> None:
        deadline = time.monotonic() + GIVE_UP_SECONDS
        while time.monotonic() < deadline:
            try:
                if self._pub is None:
                    pub = publisher.Publisher(
                        self.amqp_url, namespace=self.namespace, queue_type=self.queue_type
                    )
                    async with asyncio.timeout(15):
                        await pub.connect()
                    self._pub = pub
                async with asyncio.timeout(15):
                    await self._pub.publish(event)
                self.published += 1
                return
            except PUBLISH_ERRORS:
                self.failed_tries += 1
                await self.close()
                await asyncio.sleep(0.5)
        raise AssertionError(f"no broker node confirmed a publish for {GIVE_UP_SECONDS} s")

    async def close(self) -> None:
        if self._pub is not None:
            pub, self._pub = self._pub, None
            try:
                async with asyncio.timeout(5):
                    await pub.close()
            except (*PUBLISH_ERRORS, Exception):
                pass


@dataclass
class Report:
    name: str
    published: int = 0
    ready: int = 0
    failed: int = 0
    lost: list[str] = field(default_factory=list)  # "<id>: <status> (expected ...)"
    builds: int = 0  # handler runs that completed, everywhere
    fenced_builds: int = 0  # completed at an attempt the row did not commit
    double_builds: list[str] = field(default_factory=list)
    emails: int = 0
    email_copies: int = 0
    email_problems: list[str] = field(default_factory=list)
    webhooks: int = 0
    webhook_copies: int = 0
    webhook_problems: list[str] = field(default_factory=list)
    outbox_open: int = 0
    downloads_ok: int = 0
    bad_downloads: list[str] = field(default_factory=list)
    publish_retries: int = 0
    slowest_publish: float = 0.0
    settle_seconds: float | None = None  # from the fault's end to settled; None: never
    run_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        settled = "never settled" if self.settle_seconds is None else f"{self.settle_seconds:.1f}"
        return (
            f"{self.name}: published {self.published}, ready {self.ready}, failed "
            f"{self.failed}, lost {len(self.lost)}, duplicates {self.duplicates} (builds "
            f"{len(self.double_builds)}, emails {self.email_copies}, webhooks "
            f"{self.webhook_copies}), fenced builds {self.fenced_builds}, downloads right "
            f"{self.downloads_ok}/{self.ready}, publishes retried {self.publish_retries} "
            f"(slowest {self.slowest_publish:.1f} s), settled "
            f"{settled} s after the fault ({self.run_seconds:.1f} s in all)"
            + (f"; {'; '.join(self.notes)}" if self.notes else "")
        )

    @property
    def duplicates(self) -> int:
        return len(self.double_builds) + self.email_copies + self.webhook_copies

    def check(self, *, email_copies: int = 0, webhook_copies: int = 0) -> None:
        """Every invariant; copies of an effect are allowed only where the scenario kills
        a process between the receiver's answer and the commit recording it."""
        problems = {
            "lost or in the wrong state": self.lost,
            "built twice to completion": self.double_builds,
            "emails": self.email_problems,
            "webhooks": self.webhook_problems,
            "downloads": self.bad_downloads,
        }
        said = [f"{what}: {found[:10]}" for what, found in problems.items() if found]
        if self.settle_seconds is None:
            said.append("did not settle within the bound")
        if self.outbox_open:
            said.append(f"{self.outbox_open} outbox rows not done")
        if self.email_copies > email_copies:
            said.append(f"{self.email_copies} email copies (allowed {email_copies})")
        if self.webhook_copies > webhook_copies:
            said.append(f"{self.webhook_copies} webhook copies (allowed {webhook_copies})")
        assert not said, f"{self.line()}\n" + "\n".join(said)


Fault = Callable[[], Coroutine[Any, Any, None]]


@dataclass
class Scenario:
    name: str
    requests: list[Planned]
    db: store.Store
    producer: Producer
    mailbox: Mailbox
    hooks: WebhookReceiver
    builds: list[Path]  # every host's build record
    publish_seconds: float = 20.0  # publishing is spread over this long
    settle_timeout: float = 90.0  # the bound, counted from the end of the fault

    async def run(self, fault: Fault | None = None) -> Report:
        report = Report(self.name)
        started = time.monotonic()
        faulting: asyncio.Task[None] = asyncio.create_task(
            fault() if fault else asyncio.sleep(0), name="fault"
        )
        gap = self.publish_seconds / max(1, len(self.requests))
        try:
            for i, planned in enumerate(self.requests):
                await self.producer.publish(planned.event)
                # Paced against the clock, so a stalled publish does not slow the rest.
                await asyncio.sleep(max(0.0, started + (i + 1) * gap - time.monotonic()))
            await faulting
        finally:
            if not faulting.done():
                faulting.cancel()
            await self.producer.close()
        quiet = time.monotonic()
        settled = await self._settle(quiet + self.settle_timeout)
        if settled:
            report.settle_seconds = time.monotonic() - quiet
        report.run_seconds = time.monotonic() - started
        report.published = self.producer.published
        report.publish_retries = self.producer.failed_tries
        report.slowest_publish = self.producer.slowest
        await self._count(report)
        return report

    async def _settled(self) -> bool:
        ids = [p.event.id for p in self.requests]
        terminal = await self.db.pool.fetchval(
            "SELECT count(*) FROM bgworker_requests WHERE id = ANY($1)"
            " AND status IN ('ready', 'failed')",
            ids,
        )
        if terminal < len(ids):
            return False
        open_rows = await self.db.pool.fetchval(
            "SELECT count(*) FROM bgworker_outbox WHERE status <> 'done'"
        )
        hooked = self.hooks.ready.keys() | self.hooks.failed
        return bool(
            open_rows == 0 and all(rid in self.mailbox.by_request and rid in hooked for rid in ids)
        )

    async def _settle(self, deadline: float) -> bool:
        while time.monotonic() < deadline:
            try:
                if await self._settled():
                    return True
            except store.TRANSIENT_ERRORS:
                pass
            await asyncio.sleep(0.25)
        return False

    def read_builds(self) -> list[dict[str, object]]:
        """Every completed build: id, attempt, worker (its host name first), t (time.time())."""
        records = []
        for path in self.builds:
            if path.exists():
                records += [json.loads(line) for line in path.read_text().splitlines()]
        return records

    async def _count(self, report: Report) -> None:
        rows = {row.id: row for row in await _rows(self.db, [p.event.id for p in self.requests])}
        builds: dict[str, list[int]] = {}
        for record in self.read_builds():
            builds.setdefault(str(record["id"]), []).append(int(str(record["attempt"])))
        report.builds = sum(len(v) for v in builds.values())
        for planned in self.requests:
            rid = planned.event.id
            row = rows.get(rid)
            status = row.status if row else "missing"
            if status == "ready":
                report.ready += 1
            elif status == "failed":
                report.failed += 1
            if status != planned.expected:
                report.lost.append(f"{rid}: {status} (expected {planned.expected})")
            done = builds.get(str(rid), [])
            committed = row.attempts if row else -1
            report.fenced_builds += sum(1 for a in done if a != committed)
            if status == "ready" and done.count(committed) != 1:
                report.double_builds.append(f"{rid}: attempt {committed} built {done}")
            if (
                status == "ready"
                and row
                and row.sha256 != handlers.sha256_of(planned.size, planned.seed)
            ):
                report.bad_downloads.append(f"{rid}: stored sha256 {row.sha256}")
            ids = self.mailbox.by_request.get(rid, set())
            if len(ids) != 1:
                report.email_problems.append(f"{rid}: Message-IDs {sorted(ids)}")
            in_hooks = (
                (rid in self.hooks.ready)
                if planned.expected == "ready"
                else (rid in self.hooks.failed)
            )
            if not in_hooks:
                report.webhook_problems.append(f"{rid}: no {planned.expected} webhook")
        report.emails, report.email_copies = self.mailbox.received, self.mailbox.copies
        report.webhooks, report.webhook_copies = self.hooks.received, self.hooks.copies
        report.outbox_open = await self.db.pool.fetchval(
            "SELECT count(*) FROM bgworker_outbox WHERE status <> 'done'"
        )
        await self._downloads(report)

    async def _downloads(self, report: Report) -> None:
        """Every ready file through the link its webhook carried: the right bytes."""
        expected = {
            p.event.id: handlers.sha256_of(p.size, p.seed)
            for p in self.requests
            if p.expected == "ready"
        }
        limit = asyncio.Semaphore(8)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout) as session:

            async def one(rid: uuid.UUID, url: str) -> None:
                async with limit:
                    try:
                        async with session.get(url) as response:
                            body = await response.read()
                            status = response.status
                    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                        report.bad_downloads.append(f"{rid}: {exc!r}")
                        return
                if status != 200 or hashlib.sha256(body).hexdigest() != expected[rid]:
                    report.bad_downloads.append(f"{rid}: {status}, {len(body)} bytes")
                else:
                    report.downloads_ok += 1

            await asyncio.gather(
                *(
                    one(rid, str(event["download_url"]))
                    for rid, event in self.hooks.ready.items()
                    if rid in expected
                )
            )


async def _rows(db: store.Store, ids: list[uuid.UUID]) -> list[store.RequestRow]:
    found = []
    for rid in ids:
        row = await db.requests.get_request(rid)
        if row is not None:
            found.append(row)
    return found
