"""The acks of deliveries claimed together, sent as one ``basic.ack`` with ``multiple``.

A consumer is sent up to ``p`` deliveries at once (``intake``), they are claimed in one
statement (``store.claiming``), and each job acks its delivery as soon as that claim has
committed: ``p`` acks in the same turn of the event loop. ``Acks`` lets the first of them
wait one turn for the others, then sends one ``basic.ack multiple=True`` for all of them
where that is safe, and single acks for the rest.

When it is safe: ``multiple`` settles *every* unsettled delivery of the channel up to its
tag (AMQP 0-9-1 ``basic.ack``), and a delivery settled by mistake is a request lost. So
``Acks`` knows every delivery of the job channel: the intake calls ``arrived`` first thing
for each (nothing else consumes on that channel: the parker and the cancels have channels
of their own), in delivery order, since aio-pika runs the consumer callbacks in the order
the deliveries came. Delivery tags are consecutive from 1 on each channel, so a multiple
ack goes out only for a run of *consecutive* tags, each asked to be acked now, that starts
right after the highest tag below which every delivery is known to be settled. A delivery
settled another way (nacked, dead-lettered, acked alone) is ``processed`` (aio-pika's flag)
and only moves that floor; one still in hand (being claimed, held through an outage) stops
the run, and the acks past it go one by one. A channel restored after a reconnect is a new
channel, tags from 1, tracked on its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field

from aio_pika.abc import AbstractIncomingMessage

log = logging.getLogger(__name__)

# A delivery asked to be acked, and the future its job waits on.
_Asked = tuple[AbstractIncomingMessage, "asyncio.Future[None]"]


@dataclass
class _Channel:
    """What ``Acks`` knows of one channel's deliveries."""

    floor: int = 0  # every delivery with a tag up to this one is settled
    unsettled: dict[int, AbstractIncomingMessage] = field(default_factory=dict)
    settled_above: set[int] = field(default_factory=set)  # settled, above the floor

    def prune(self) -> None:
        """Forget what was settled meanwhile (any way) and move the floor past it."""
        self.settled([t for t, m in self.unsettled.items() if m.processed])

    def settled(self, tags: list[int]) -> None:
        for tag in tags:
            self.unsettled.pop(tag, None)
            self.settled_above.add(tag)
        while self.floor + 1 in self.settled_above:
            self.floor += 1
            self.settled_above.discard(self.floor)


class Acks:
    """The job channel's acks (see the module's docstring). ``counts`` (the intake's):
    ``acks multiple`` (sent with multiple=True), ``acks covered`` (deliveries those
    settled), ``acks single``."""

    def __init__(self, counts: Counter[str] | None = None) -> None:
        self.counts: Counter[str] = Counter() if counts is None else counts
        self._channels: dict[object, _Channel] = {}
        self._asked: list[_Asked] = []
        self._sending: set[asyncio.Task[None]] = set()

    def arrived(self, message: AbstractIncomingMessage) -> None:
        """A delivery on the job channel: called by the intake before anything else."""
        tag = message.delivery_tag
        if tag is None:
            return
        channel = message.channel
        known = self._channels.get(channel)
        if known is None:
            # A new channel (the first, or one restored after a reconnect): forget closed ones.
            for old in [c for c in self._channels if getattr(c, "is_closed", False)]:
                del self._channels[old]
            known = self._channels[channel] = _Channel()
        known.unsettled[tag] = message

    async def ack(self, message: AbstractIncomingMessage) -> None:
        """Ack ``message``, with the others asked for in this turn of the event loop.
        Raises what ``message.ack`` raises (the channel gone)."""
        known = self._channels.get(message.channel)
        if known is None or message.delivery_tag not in known.unsettled:
            self.counts["acks single"] += 1
            await message.ack()
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._asked.append((message, done))
        if len(self._asked) == 1:
            # The jobs whose claim committed with this one resume in this turn: the flush
            # is queued behind them. Its own task: a job cancelled meanwhile (a stop) does
            # not take the others' acks with it.
            asyncio.get_running_loop().call_soon(self._flush)
        await done

    def _flush(self) -> None:
        asked, self._asked = self._asked, []
        task = asyncio.create_task(self._send(asked), name="acks")
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, asked: list[_Asked]) -> None:
        try:
            by_channel: dict[object, list[_Asked]]
            by_channel = {}
            for item in asked:
                by_channel.setdefault(item[0].channel, []).append(item)
            for channel, items in by_channel.items():
                await self._send_on(self._channels.get(channel) or _Channel(), items)
        except BaseException as exc:  # a bug here must not leave a job waiting for ever
            for _, done in asked:
                _resolve(done, exc if isinstance(exc, Exception) else RuntimeError(exc))
            if not isinstance(exc, Exception):
                raise
            log.exception("acks: sending failed")

    async def _send_on(self, known: _Channel, items: list[_Asked]) -> None:
        known.prune()
        wanted = {m.delivery_tag: (m, f) for m, f in items if m.delivery_tag is not None}
        run: list[int] = []
        tag = known.floor + 1
        while tag in wanted and tag in known.unsettled:
            run.append(tag)
            tag += 1
        if len(run) >= 2:
            await self._ack_run(known, [wanted.pop(t) for t in run])
        for message, done in items:  # the rest, one by one
            if not done.done():
                await self._ack_one(known, message, done)

    async def _ack_run(
        self,
        known: _Channel,
        run: list[_Asked],
    ) -> None:
        last, _ = run[-1]
        try:
            await last.ack(multiple=True)
        except Exception as exc:
            for _, done in run:
                _resolve(done, exc)
            return
        self.counts["acks multiple"] += 1
        self.counts["acks covered"] += len(run)
        for message, done in run:
            if message is not last:
                _mark_processed(message)
            _resolve(done)
        known.settled([m.delivery_tag for m, _ in run if m.delivery_tag is not None])

    async def _ack_one(
        self, known: _Channel, message: AbstractIncomingMessage, done: asyncio.Future[None]
    ) -> None:
        self.counts["acks single"] += 1
        try:
            await message.ack()
        except Exception as exc:
            _resolve(done, exc)
            return
        _resolve(done)
        if message.delivery_tag is not None:
            known.settled([message.delivery_tag])


def _resolve(done: asyncio.Future[None], exc: Exception | None = None) -> None:
    """Tell the job its ack went out (or why not), unless it stopped waiting (cancelled)."""
    if done.done():
        return
    if exc is None:
        done.set_result(None)
    else:
        done.set_exception(exc)


def _mark_processed(message: AbstractIncomingMessage) -> None:
    """A delivery a multiple ack settled: aio-pika marks only the one it was sent for, so
    mark this one too, or a later ``ack`` of it would be sent again (and close the channel
    with PRECONDITION_FAILED: unknown delivery tag). The flag is aio-pika's private one
    (``IncomingMessage.__processed``); ``tests/integration/test_acking.py`` fails if it
    stops being the one ``processed`` reads."""
    setattr(message, "_IncomingMessage__processed", True)  # noqa: B010
