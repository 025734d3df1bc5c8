"""Lease renewal that does not need the worker's event loop (guarantee 13).

A claimed job's lease must be renewed while it runs, whatever its handler does: an
``async def`` handler that calls blocking code (``time.sleep``, a CPU-bound library call)
holds the worker's event loop for as long as it runs, and a renewal on that loop would wait
with it; past the lease, another worker would take a job that is still running. So the
leases are renewed by :class:`LeaseKeeper`: a thread with its own small event loop and its
own PostgreSQL connection, renewing all of the worker's leases in one statement every
third of the lease.

The fence stays what it was: the statement extends only rows still running under this
worker's owner name and lease token without a pending cancel (``renew_leases``), and every
outcome of a job stays fenced on its token. A token that does not come back was cancelled
or taken over; the job is told on its own loop (once the loop is free), as the heartbeat
did. What still loses the leases: a worker that stops (the thread stops with it, and a
killed process takes the thread along), and one cut off from PostgreSQL (the renewal fails
or hangs past its timeout, and the leases run out). A C extension that holds the GIL for
longer than a lease stops this thread too, as it stops the loop watchdog.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Self

import asyncpg

from bgworker.observe import logs
from bgworker.store import connection, queries, rows

log = logging.getLogger(__name__)


@dataclass
class _Held:
    request_id: uuid.UUID
    on_lost: Callable[[], None]
    # Renewed until then (time.monotonic()); see ``bound``.
    until: float = math.inf


class LeaseKeeper:
    """Renews the leases of one worker's running jobs from its own thread, from ``start``
    (or ``async with``) to ``stop``.

    ``hold`` and ``drop`` are called on the worker's loop around a job's run; ``on_lost``
    is called there too, once, when the lease is found gone while still held."""

    def __init__(
        self,
        dsn: str,
        worker_id: str,
        lease_seconds: float,
        *,
        pooler: connection.Pooler = "none",
    ) -> None:
        self.dsn = dsn
        self.pooler: connection.Pooler = pooler
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds
        self.interval = lease_seconds / 3
        self._held: dict[uuid.UUID, _Held] = {}  # by lease token
        self._lock = threading.Lock()  # _held is read from the thread
        self._owner: asyncio.AbstractEventLoop | None = None  # the worker's loop
        self._loop: asyncio.AbstractEventLoop | None = None  # the thread's own
        self._rounds: asyncio.Task[None] | None = None  # on the thread's loop
        self._thread: threading.Thread | None = None

    # -- on the worker's loop -----------------------------------------------------------

    def hold(self, claim: rows.Claim, on_lost: Callable[[], None]) -> None:
        with self._lock:
            self._held[claim.lease_token] = _Held(claim.request_id, on_lost)

    def bound(self, claim: rows.Claim, seconds: float | None) -> None:
        """Renew the claim's lease for at most ``seconds`` more (None: no bound). The job
        sets its handler's time limit plus a lease: past it, only an event loop still
        blocked could keep the handler running (the limit fires on the loop), a worker as
        good as stopped, so its lease runs out and another worker takes the request."""
        until = math.inf if seconds is None else time.monotonic() + seconds
        with self._lock:
            if (held := self._held.get(claim.lease_token)) is not None:
                held.until = until

    def drop(self, claim: rows.Claim) -> None:
        """The job is done with its lease (its outcome is next): no renewal, no loss."""
        with self._lock:
            self._held.pop(claim.lease_token, None)

    def start(self) -> None:
        self._owner = asyncio.get_running_loop()
        started = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(started,), name="bgworker-leases", daemon=True
        )
        self._thread.start()
        started.wait()  # the thread's loop exists: stop() can reach it

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Stop renewing, a round in flight included (a statement that hangs does not hold
        the worker's exit), and wait for the thread (its connection closed)."""
        if self._thread is None:
            return
        if self._loop is not None and self._rounds is not None:
            with contextlib.suppress(RuntimeError):  # its loop already closed
                self._loop.call_soon_threadsafe(self._rounds.cancel)
        await asyncio.to_thread(self._thread.join)
        self._thread = None

    def _lost(self, token: uuid.UUID) -> None:
        with self._lock:
            held = self._held.pop(token, None)
        if held is not None:  # not dropped meanwhile: the job is still before its outcome
            held.on_lost()

    # -- on the thread ------------------------------------------------------------------

    def _run(self, started: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._rounds = loop.create_task(self._renew_until_stopped(), name="lease-rounds")
        started.set()
        try:
            loop.run_until_complete(self._rounds)
        except asyncio.CancelledError:
            pass  # stopped
        except BaseException:
            # Never expected (every round catches its own errors), and fatal to the
            # guarantee: the leases run out and other workers take the jobs.
            log.exception("the lease keeper stopped; the leases of running jobs will expire")
            raise
        finally:
            loop.close()

    async def _renew_until_stopped(self) -> None:
        """A round every ``interval`` from the start of the previous one, so a slow round
        does not push the next one later; until cancelled (``stop``)."""
        loop = asyncio.get_running_loop()
        conn: asyncpg.Connection | None = None
        next_round = loop.time() + self.interval
        try:
            while True:
                await asyncio.sleep(max(0.0, next_round - loop.time()))
                # A round that took longer than an interval (a timeout) is followed at once.
                next_round = max(next_round + self.interval, loop.time())
                conn = await self._renew(conn)
        finally:
            if conn is not None:
                conn.terminate()

    async def _renew(self, conn: asyncpg.Connection | None) -> asyncpg.Connection | None:
        """One round; returns the connection to use next time (None: make a new one)."""
        now = time.monotonic()
        with self._lock:
            held = [(token, h) for token, h in self._held.items() if h.until > now]
            overdue = [h for h in self._held.values() if -math.inf < h.until <= now]
            for h in overdue:
                h.until = -math.inf  # said once
        for h in overdue:
            log.warning(
                "request %s: past its time limit with the event loop still blocked; its "
                "lease is no longer renewed (another worker will take the request)",
                h.request_id,
            )
        if not held:
            return conn
        try:
            if conn is None:
                # No longer than a round: a connect that hangs (a partition) must not hold
                # the rounds after it.
                conn = await connection.connect(self.dsn, pooler=self.pooler, timeout=self.interval)
            sql, *args = queries.bind(
                "renew_leases",
                worker=self.worker_id,
                request_ids=[h.request_id for _, h in held],
                lease_tokens=[token for token, _ in held],
                lease_seconds=self.lease_seconds,
            )
            # Likewise a statement: past a round, drop the connection and connect again.
            records = await conn.fetch(sql, *args, timeout=self.interval)
        except Exception as exc:
            # Keep trying every round: if PostgreSQL stays away past the lease, the leases
            # run out, the fenced outcomes refuse, and another worker's reaper requeues.
            # Any failure here is PostgreSQL's (its own connection, one statement).
            logs.OUTAGES[logs.POSTGRESQL].lost(exc, f"lease renewal of {len(held)} job(s)")
            if conn is not None:
                conn.terminate()
            return None
        logs.OUTAGES[logs.POSTGRESQL].back()
        alive = {r["lease_token"] for r in records}
        owner = self._owner
        assert owner is not None
        for token, _ in held:
            if token not in alive:
                with contextlib.suppress(RuntimeError):  # the worker's loop is closed
                    owner.call_soon_threadsafe(self._lost, token)
        return conn
