"""Side effects of a finished request, carried out once: emails, outgoing events, webhooks.

The state change that causes an effect (``ready``, ``failed``) inserts an outbox row in the
same transaction, one per (request, kind), already claimed by the worker that wrote it;
after the commit that worker's dispatcher performs it and marks it done, or records the
failure for a retry with backoff. So SMTP or broker trouble never costs a file, and no
effect is lost when a worker dies: another worker's sweep picks the row up when its claim
runs out.

At-least-once remains at the very edge: a worker killed after the SMTP server accepted a
message but before ``done`` committed re-sends it. Emails carry a deterministic Message-ID
and events a deterministic message_id so receivers can collapse that rare copy; webhooks
carry that message_id as their ``webhook-id``, the same on every attempt.

Emails and events are retried until they succeed (the broker and the SMTP server are ours);
a webhook is given up (status ``given_up``) after ``webhooks.max_attempts``, or at once when
its URL is refused: a receiver may be gone for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from typing import Any, Final

from aio_pika.abc import AbstractChannel

from bgworker import faults, settings, store
from bgworker.contract import events, requester_texts, states
from bgworker.effects import addresses, mail, webhooks
from bgworker.links import lifecycle, tokens
from bgworker.messaging import broker, topology, wire
from bgworker.observe import logs, metrics, tracing

log = logging.getLogger(__name__)

SWEEP_BATCH: Final = 50


class Handoff:
    """Effects a worker's own transactions wrote, already claimed by it, passed from the
    store to the dispatcher after their commit. Made first and given to both, so neither is
    changed after it is built: the store calls ``put`` (a plain callable, it knows nothing
    of the dispatcher), the dispatcher takes them out."""

    def __init__(self) -> None:
        self._items: list[store.OutboxItem] = []
        self.arrived = asyncio.Event()  # set while items wait

    def put(self, items: list[store.OutboxItem]) -> None:
        self._items.extend(items)
        self.arrived.set()

    def take(self) -> list[store.OutboxItem]:
        items, self._items = self._items, []
        self.arrived.clear()
        return items


@dataclass(kw_only=True)
class Dispatcher:
    db: store.Store
    handoff: Handoff
    mailer: mail.Mailer
    signer: tokens.Signer
    channel: AbstractChannel
    topology: topology.Topology
    public_url: str
    # retry backoff, sweep interval and claim length: outbox_* of the worker settings
    config: settings.WorkerSettings
    # secrets, attempts, timeout and address policy of webhooks
    webhook_config: settings.WebhookSettings = field(default_factory=settings.WebhookSettings)

    def __post_init__(self) -> None:
        self._inflight: set[asyncio.Task[None]] = set()
        self._closing = asyncio.Event()
        self._webhooks = webhooks.Sender.from_settings(self.webhook_config)

    async def run(self, stop: asyncio.Event) -> None:
        """Perform handed-off effects as they come, and sweep for due ones (failed earlier,
        or left by a worker that died) every ``outbox_interval_seconds`` until ``stop``.
        Handed-off effects are still performed after ``stop`` (jobs finishing during the
        worker's drain), until ``close``."""
        loop = asyncio.get_running_loop()
        next_sweep = loop.time()
        # One event wakes the loop: items handed off set it, and so do ``stop`` (through
        # this one relay) and ``close``. Waiting on the three events at once took a task
        # per event at every wake, about 2.5 tasks per job (BENCHMARKS.md, issue 11).
        relay = asyncio.create_task(self._wake_on(stop), name="outbox-stop-relay")
        try:
            while True:
                self._take_handed_off()
                if self._closing.is_set():
                    break
                timeout = None
                if not stop.is_set():
                    if loop.time() >= next_sweep:
                        await self.sweep()
                        next_sweep = loop.time() + self.config.outbox_interval_seconds
                        continue  # take what arrived during the sweep
                    timeout = next_sweep - loop.time()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self.handoff.arrived.wait()
        finally:
            relay.cancel()
        await self.drain()

    async def _wake_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self.handoff.arrived.set()  # ``run`` looks at ``stop`` itself once awake

    async def close(self) -> None:
        """End ``run`` once every effect in hand is done (the worker calls it after its
        drain, before the pool and channel close), then QUIT the idle SMTP connections."""
        self._closing.set()
        self.handoff.arrived.set()  # wakes ``run``, which sees ``_closing``
        await self.drain()
        await self.mailer.close()

    async def drain(self) -> None:
        """Finish every effect in hand, including ones handed off meanwhile."""
        self._take_handed_off()
        while self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
            self._take_handed_off()

    def _take_handed_off(self) -> None:
        for item in self.handoff.take():
            self._spawn(item)

    async def sweep(self) -> int:
        try:
            items = await self.db.outbox.claim_outbox_due(
                SWEEP_BATCH, self.config.outbox_claim_seconds
            )
        except Exception as exc:  # next sweep retries; the loop must not die
            if not faults.report(exc, "outbox sweep"):
                log.warning("outbox sweep failed, will retry: %s", logs.describe(exc))
            return 0
        for item in items:
            self._spawn(item)
        return len(items)

    def _spawn(self, item: store.OutboxItem) -> None:
        task = asyncio.create_task(self.perform(item), name=f"outbox-{item.kind}-{item.request_id}")
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def perform(self, item: store.OutboxItem) -> None:
        took_effect = False

        async def done() -> None:
            nonlocal took_effect
            took_effect = True
            await self._record_done(item)

        try:
            with tracing.span(
                "email" if item.kind in states.EMAILS else "event",
                parent=item.payload.get(tracing.TRACE_KEY),
                kind="producer",
                request_id=str(item.request_id),
                effect=item.kind,
            ):
                await self._perform(item, done)
        except Exception as exc:
            if took_effect:
                return  # sent and recorded (or recording gave up and logged): never resend
            if item.kind in states.WEBHOOKS and await self._given_up(item, exc):
                return
            retry_seconds = self.config.outbox_retry_seconds
            step = min(item.attempts, len(retry_seconds)) - 1
            delay = retry_seconds[max(step, 0)]
            # A connection lost meanwhile is said once (faults.report); this line is news
            # about the effect, not an alert.
            log.log(
                faults.level(exc, f"{item.kind} for {item.request_id}"),
                "%s for %s failed (attempt %d), retry in %.0fs: %s",
                item.kind,
                item.request_id,
                item.attempts,
                delay,
                logs.describe(exc),
                extra=logs.about(item.request_id),
            )
            metrics.OUTBOX_FAILURES.labels(item.kind).inc()
            try:
                await self.db.outbox.outbox_retry(item, f"{type(exc).__name__}: {exc}", delay)
            except Exception as again:  # its claim runs out and it is retried then
                if not faults.report(again, "outbox"):
                    log.exception(
                        "could not record outbox failure for %s",
                        item.request_id,
                        extra=logs.about(item.request_id),
                    )

    async def _given_up(self, item: store.OutboxItem, exc: Exception) -> bool:
        """Give a webhook up when its URL is refused (permanent) or it was its last attempt;
        False: retry it as any effect."""
        refused = isinstance(exc, addresses.RefusedError)
        if not refused and item.attempts < self.webhook_config.max_attempts:
            return False
        error = f"{type(exc).__name__}: {exc}"
        if not refused:
            error = f"given up after {item.attempts} attempts: {error}"
        log.warning(
            "%s for %s: %s", item.kind, item.request_id, error, extra=logs.about(item.request_id)
        )
        metrics.OUTBOX_FAILURES.labels(item.kind).inc()
        try:
            await self.db.outbox.outbox_give_up(item, wire.shorten(error, wire.ERROR_LIMIT))
        except Exception as again:  # the claim runs out and the next attempt gives it up
            if not faults.report(again, "outbox"):
                log.exception(
                    "could not record that %s for %s was given up",
                    item.kind,
                    item.request_id,
                    extra=logs.about(item.request_id),
                )
        return True

    async def _record_done(self, item: store.OutboxItem) -> None:
        """The effect happened: record it, retrying while PostgreSQL is away (a restart)
        rather than letting the claim run out, which would send it again. Gives up only when
        the claim is about to expire, since another dispatcher may then take the row."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.config.outbox_claim_seconds * 0.8
        delay = 0.2
        while True:
            try:
                await self.db.outbox.outbox_done(item)
            except Exception as exc:
                if loop.time() + delay >= give_up:
                    log.error(
                        "%s for %s took effect but could not be recorded: %s; it may be repeated",
                        item.kind,
                        item.request_id,
                        logs.describe(exc),
                        extra=logs.about(item.request_id),
                    )
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            metrics.OUTBOX_DONE.labels(item.kind).inc()
            return

    async def _perform(self, item: store.OutboxItem, done: Callable[[], Awaitable[None]]) -> None:
        """Carry out one effect and call ``done`` the moment it has taken effect."""
        p = item.payload
        rid = item.request_id
        if item.kind == states.EffectKind.EVENT_READY:
            ready = await self._ready_event(item)
            await broker.publish_event(self.channel, self.topology, topology.READY_KEY, ready)
            await done()
        elif item.kind == states.EffectKind.EVENT_FAILED:
            failed = _failed_event(rid, p)
            await broker.publish_event(self.channel, self.topology, topology.FAILED_KEY, failed)
            await done()
        elif item.kind in states.WEBHOOKS:
            is_ready = item.kind == states.EffectKind.WEBHOOK_READY
            event = await self._ready_event(item) if is_ready else _failed_event(rid, p)
            # The event's message_id (wire.event): one per request and outcome.
            key = topology.READY_KEY if is_ready else topology.FAILED_KEY
            body = event.model_dump_json().encode()
            await self._webhooks.send(p["url"], f"{rid}.{key}", body)
            await done()
        elif item.kind == states.EffectKind.EMAIL_READY:
            context = {
                **p,
                "request_id": str(rid),
                "download_url": await self._url(item),
                "my_files_url": self._my_files_url(p["to"]),
                **await self._scheduled(rid),
            }
            message = _resent(self.mailer.render("ready", p["to"], context), p)
            await self.mailer.send(_unsubscribe(message, context), done)
        elif item.kind == states.EffectKind.EMAIL_BUNDLE:
            # One email for the whole bundle, on the outbox row of the part that ended it.
            bundles = self.signer.for_bundles()
            token = bundles.issue(uuid.UUID(p["bundle_id"]), requester_id=p.get("requester_id"))
            context = {**p, "request_id": p["bundle_id"]}
            context["bundle_url"] = tokens.bundle_url(self.public_url, token)
            context["my_files_url"] = self._my_files_url(p["to"])
            await self.mailer.send(self.mailer.render("bundle", p["to"], context), done)
        elif item.kind == states.EffectKind.EMAIL_FAILED:
            # Rows written before ``message`` existed carry the exception as ``error``.
            safe = p.get("message") or requester_texts.failure(p.get("reason"))
            context = {**p, "error_class": "", "error": safe, "message": safe}
            context.update(
                request_id=str(rid),
                my_files_url=self._my_files_url(p["to"]),
                **await self._scheduled(rid),
            )
            message = _resent(self.mailer.render("failed", p["to"], context), p)
            await self.mailer.send(_unsubscribe(message, context), done)
        elif item.kind == states.EffectKind.EMAIL_MY_FILES:
            # The link is signed now, so it lives its whole lifetime from the sending.
            context = {**p, "request_id": str(rid), "my_files_url": self._my_files_url(p["to"])}
            message = _resent(self.mailer.render("my_files", p["to"], context), p)
            await self.mailer.send(message, done)
        else:
            raise ValueError(f"unknown outbox kind {item.kind!r}")

    async def _ready_event(self, item: store.OutboxItem) -> events.FileReady:
        p = item.payload
        return events.FileReady(
            id=item.request_id,
            file_type=p["file_type"],
            filename=p["filename"],
            content_type=p["content_type"],
            size=p["size"],
            sha256=p["sha256"],
            ready_at=datetime.fromisoformat(p["ready_at"]),
            expires_at=datetime.fromisoformat(p["expires_at"]),
            download_url=await self._url(item),
        )

    def _my_files_url(self, to: str) -> str:
        """The footer's link to the requester's page of their files, for the address the
        email goes to (only that mailbox receives it)."""
        return tokens.my_files_url(self.public_url, self.signer.my_files(to))

    async def _scheduled(self, rid: uuid.UUID) -> dict[str, str]:
        """A scheduled period's email: its schedule's unsubscribe URL. Only a version-5 id
        can be one (``uuid5(schedule, period)``), so other emails cost no query."""
        if rid.version != 5 or (schedule := await self.db.schedules.schedule_of(rid)) is None:
            return {}
        token = self.signer.unsubscribe(schedule)
        return {"unsubscribe_url": tokens.unsubscribe_url(self.public_url, token)}

    async def _url(self, item: store.OutboxItem) -> str:
        # The generation read when the item was claimed (the same moment as a query here
        # would be, one round trip fewer); an item made without it asks.
        generation = item.link_generation
        if generation is None:
            generation = await self.db.links.link_generation(item.request_id)
        requester_id = item.payload.get("requester_id")
        return lifecycle.download_url(
            self.public_url, self.signer, item.request_id, requester_id, generation or 0
        )


def _failed_event(rid: uuid.UUID, p: dict[str, Any]) -> events.FileFailed:
    return events.FileFailed(
        id=rid,
        file_type=p.get("file_type"),
        reason=p["reason"],
        error_class=p["error_class"],
        error=p["error"],
        # Rows written before ``message`` existed: derive it from the reason.
        message=p.get("message") or requester_texts.failure(p.get("reason")),
        attempts=p["attempts"],
        failed_at=datetime.fromisoformat(p["failed_at"]),
    )


def _unsubscribe(message: EmailMessage, context: dict[str, Any]) -> EmailMessage:
    """RFC 8058 one-click unsubscribe: a mail client POSTs ``List-Unsubscribe=One-Click`` to
    the URL, which ends the schedule (a GET only shows a confirmation page)."""
    if url := context.get("unsubscribe_url"):
        message["List-Unsubscribe"] = f"<{url}>"
        message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    return message


def _resent(message: EmailMessage, payload: dict[str, Any]) -> EmailMessage:
    """A resent email (``bgworker resend``) is a new message: its own Message-ID, so a
    receiver that collapses copies of the first one by its id still shows it."""
    resend = payload.get("resend")
    if isinstance(resend, int) and resend > 0:
        old = str(message["Message-ID"])
        message.replace_header("Message-ID", old.replace("@", f".resend-{resend}@", 1))
    return message
