"""Handlers without services: registration, the in-memory writers, and Execution (sync
handlers on threads, time limits) over a real LocalWriter in a temp directory."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgworker import handlers, storage
from bgworker.contract import events
from bgworker.examples import login_events
from bgworker.handlers import execution as execution_mod
from tests import handlers as test_handlers
from tests import helpers
from tests.helpers import wait_until


def _ctx(file_type: str = "x", **criteria: object) -> handlers.JobContext:
    return handlers.JobContext(
        events.FileRequested(
            id=uuid.uuid4(), file_type=file_type, criteria=criteria, filename="f.bin"
        )
    )


# --- Unit-testing a handler: the in-memory writers (what docs/handlers.md shows) ---------


async def test_an_async_handler_unit_tested_with_the_memory_writer() -> None:
    ctx = _ctx("login_events", rows=25, seed=3)
    out = storage.MemoryWriter()
    await login_events.login_events(ctx, out)
    rows = list(csv.reader(io.StringIO(out.data.decode())))
    assert rows[0] == ["timestamp", "user", "ip_address", "result", "user_agent"]
    assert len(rows) == 26
    assert out.size == len(out.data)
    assert out.sha256 == hashlib.sha256(out.data).hexdigest()
    assert ctx.reported is not None and ctx.reported.fraction == 1.0


async def test_an_async_handler_rejecting_its_criteria_raises_permanent_error() -> None:
    with pytest.raises(handlers.PermanentError, match=r"criteria\.rows"):
        await login_events.login_events(_ctx("login_events", rows="many"), storage.MemoryWriter())


def test_a_sync_handler_unit_tested_with_the_sync_memory_writer() -> None:
    ctx = _ctx("sync_sleep", seconds=0, size=5000, seed=9)
    out = storage.SyncMemoryWriter()
    test_handlers.sync_sleep(ctx, out)
    assert out.data == test_handlers.blob_bytes(5000, 9)
    assert ctx.reported is not None and ctx.reported.fraction == 1.0


# --- Registration -------------------------------------------------------------------------


def _registered(registry: handlers.Registry, file_type: str) -> handlers.Registration:
    registration = registry.find(file_type)
    assert registration is not None, file_type
    return registration


class _AsyncCallable:
    async def __call__(self, ctx: handlers.JobContext, out: storage.FileWriter) -> None:
        await out.write(b"x")


def test_sync_is_detected_from_the_function() -> None:
    registry = handlers.Registry()

    @registry.handler("a")
    async def a(ctx: handlers.JobContext, out: storage.FileWriter) -> None: ...

    @registry.handler("s", time_limit=2.5)
    def s(ctx: handlers.JobContext, out: storage.SyncFileWriter) -> None: ...

    registry.register("c", _AsyncCallable())
    assert _registered(registry, "a").sync is False
    assert _registered(registry, "c").sync is False
    assert _registered(registry, "s").sync is True
    assert _registered(registry, "s").time_limit == 2.5
    assert _registered(registry, "a").time_limit is None  # the worker's default

    merged = handlers.Registry()
    merged.merge(registry)
    assert _registered(merged, "s") == _registered(registry, "s")


def test_sync_true_on_an_async_handler_is_refused() -> None:
    async def a(ctx: handlers.JobContext, out: storage.FileWriter) -> None: ...

    with pytest.raises(TypeError, match="sync=True"):
        handlers.Registry().register("a", a, sync=True)


@pytest.mark.parametrize("limit", [-1.0, float("nan"), float("inf")])
def test_a_time_limit_must_be_a_finite_number_of_seconds(limit: float) -> None:
    def s(ctx: handlers.JobContext, out: storage.SyncFileWriter) -> None: ...

    with pytest.raises(ValueError, match="time_limit"):
        handlers.Registry().register("s", s, time_limit=limit)


def test_time_limit_resolution() -> None:
    def s(ctx: handlers.JobContext, out: storage.SyncFileWriter) -> None: ...

    execution = execution_mod.Execution(1, default_time_limit=60.0)
    assert execution.time_limit(handlers.Registration("s", s, None)) == 60.0
    assert execution.time_limit(handlers.Registration("s", s, None, time_limit=5.0)) == 5.0
    assert execution.time_limit(handlers.Registration("s", s, None, time_limit=0)) is None
    assert execution_mod.Execution(1, 0).time_limit(handlers.Registration("s", s, None)) is None


def test_the_context_check_raises_the_stop_reason_once_stopped() -> None:
    ctx = _ctx()
    ctx.check()
    assert not ctx.cancelled
    ctx.stop(handlers.TimeLimitError(2))
    ctx.stop(handlers.StoppedError("later reasons do not replace the first"))
    assert ctx.cancelled
    with pytest.raises(handlers.TimeLimitError, match=r"^exceeded its time limit of 2\.0 s$"):
        ctx.check()


# --- Execution over a real LocalWriter ----------------------------------------------------


@pytest.fixture
def files(tmp_path: Path) -> storage.LocalStorage:
    s = storage.LocalStorage(tmp_path / "files")
    s.ensure()
    return s


def _writer(files: storage.LocalStorage) -> tuple[str, storage.LocalWriter]:
    key = storage.key_for(uuid.uuid4(), uuid.uuid4())
    return key, files.writer(key)


async def _within(awaitable: Awaitable[object], seconds: float) -> object:
    async with asyncio.timeout(seconds):
        return await awaitable


async def test_a_sync_handler_runs_on_a_handler_thread_and_streams_to_the_file(
    files: storage.LocalStorage,
) -> None:
    data = test_handlers.blob_bytes(2 * storage.BUFFER_SIZE + 5, 1)
    seen: list[str] = []

    def build(ctx: handlers.JobContext, out: storage.SyncFileWriter) -> None:
        seen.append(threading.current_thread().name)
        for i in range(0, len(data), 70_000):
            out.write(data[i : i + 70_000])

    key, writer = _writer(files)
    await execution_mod.Execution(2).call(
        handlers.Registration("b", build, None, sync=True), _ctx(), writer
    )
    size, digest = await writer.finish()
    assert (size, digest) == (len(data), hashlib.sha256(data).hexdigest())
    assert files.path(key).read_bytes() == data
    assert seen and seen[0].startswith("bgworker-handler-")


async def test_a_sync_handler_error_comes_back_as_itself(files: storage.LocalStorage) -> None:
    def build(ctx: handlers.JobContext, out: storage.SyncFileWriter) -> None:
        raise handlers.PermanentError("bad criteria")

    _, writer = _writer(files)
    with pytest.raises(handlers.PermanentError, match="bad criteria"):
        await execution_mod.Execution(1).call(
            handlers.Registration("b", build, None, sync=True), _ctx(), writer
        )
    await writer.abort()


async def test_a_plain_def_returning_a_coroutine_is_an_error(files: storage.LocalStorage) -> None:
    async def real(ctx: handlers.JobContext, out: storage.FileWriter) -> None: ...

    def wrapper(ctx: handlers.JobContext, out: storage.SyncFileWriter) -> None:
        # The mistake under test: a plain def that returns a coroutine.
        return real(ctx, out)  # type: ignore[arg-type,return-value]

    registry = handlers.Registry()
    registry.register("w", wrapper)  # looks synchronous
    _, writer = _writer(files)
    with pytest.raises(TypeError, match="sync=False"):
        await execution_mod.Execution(1).call(_registered(registry, "w"), _ctx(), writer)
    await writer.abort()


async def test_an_async_handler_past_its_limit_raises_time_limit_error(
    files: storage.LocalStorage,
) -> None:
    async def hang(ctx: handlers.JobContext, out: storage.FileWriter) -> None:
        await asyncio.Event().wait()

    ctx = _ctx()
    _, writer = _writer(files)
    execution = execution_mod.Execution(1)
    call = execution.call(handlers.Registration("h", hang, None, time_limit=0.2), ctx, writer)
    with pytest.raises(handlers.TimeLimitError, match=r"^exceeded its time limit of 0\.2 s$"):
        await _within(call, 10)
    assert ctx.cancelled
    assert execution.running == {}
    await writer.abort()


async def test_the_handlers_own_timeout_error_is_not_a_time_limit(
    files: storage.LocalStorage,
) -> None:
    async def times_out(ctx: handlers.JobContext, out: storage.FileWriter) -> None:
        async with asyncio.timeout(0.01):
            await asyncio.Event().wait()

    _, writer = _writer(files)
    with pytest.raises(TimeoutError) as raised:
        await execution_mod.Execution(1, 30).call(
            handlers.Registration("t", times_out, None), _ctx(), writer
        )
    assert not isinstance(raised.value, handlers.TimeLimitError)
    await writer.abort()


async def test_a_sync_handler_ignoring_the_stop_is_left_behind_and_keeps_its_thread(
    files: storage.LocalStorage,
) -> None:
    release = threading.Event()
    outcome: list[str] = []

    def stubborn(ctx: handlers.JobContext, out: storage.SyncFileWriter) -> None:
        out.write(b"before")
        release.wait(30)  # ignores ctx: blocks until the test lets it go
        try:
            out.write(b"after the limit")
        except handlers.StoppedError as exc:
            outcome.append(type(exc).__name__)
            raise

    execution = execution_mod.Execution(1)
    reg = handlers.Registration("s", stubborn, None, time_limit=0.2, sync=True)
    key, writer = _writer(files)
    with pytest.raises(handlers.TimeLimitError):
        await _within(execution.call(reg, _ctx(), writer), 10)
    await writer.abort()  # at once, while the thread still runs
    assert execution.abandoned == 1 and outcome == []
    assert not files.path(key).exists() and list((files.root / ".tmp").iterdir()) == []

    # Its one thread slot stays taken: the next sync call waits for it, then runs.
    def quick(ctx: handlers.JobContext, out: storage.SyncFileWriter) -> None:
        ran.set()
        out.write(b"quick")

    ran = threading.Event()

    key2, writer2 = _writer(files)
    follower = asyncio.create_task(
        execution.call(handlers.Registration("q", quick, None, sync=True), _ctx(), writer2)
    )
    for _ in range(3):
        await asyncio.sleep(0)  # let it reach the wait for a thread
    assert not follower.done() and not ran.is_set() and execution.abandoned == 1
    release.set()
    await _within(follower, 10)
    assert outcome == ["TimeLimitError"]  # its late write was refused
    assert execution.abandoned == 0
    await writer2.finish()
    assert files.path(key2).read_bytes() == b"quick"
    assert list((files.root / ".tmp").iterdir()) == []


async def test_cancelling_a_sync_call_tells_the_handler_to_stop(
    files: storage.LocalStorage,
) -> None:
    started = threading.Event()
    raised: list[str] = []

    def cooperative(ctx: handlers.JobContext, out: storage.SyncFileWriter) -> None:
        started.set()
        try:
            while True:
                ctx.check()
                time.sleep(0.01)
        except handlers.StoppedError as exc:
            raised.append(type(exc).__name__)

    ctx = _ctx()
    _, writer = _writer(files)
    execution = execution_mod.Execution(1)
    task = asyncio.create_task(
        execution.call(handlers.Registration("c", cooperative, None, sync=True), ctx, writer)
    )
    await _within(asyncio.to_thread(started.wait, 10), 15)
    task.cancel()  # what a lost lease or a shutdown does
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ctx.cancelled
    await writer.abort()

    await wait_until(lambda: execution.abandoned == 0, timeout=10)
    assert raised == ["StoppedError"]


# --- BlockingWriter: any sequence of writes gives the same file as one write --------------


@settings(max_examples=helpers.examples(40), deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=2000),
            st.integers(0, 3 * storage.BUFFER_SIZE).map(lambda n: b"\x5a" * n),
        ),
        max_size=8,
    )
)
def test_blocking_writes_match_their_concatenation(chunks: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as root:
        files = storage.LocalStorage(Path(root))
        files.ensure()
        key, writer = _writer(files)
        blocking = storage.BlockingWriter(writer)
        for chunk in chunks:
            blocking.write(chunk)
        size, digest = asyncio.run(writer.finish())
        data = b"".join(chunks)
        assert (size, digest) == (len(data), hashlib.sha256(data).hexdigest())
        assert files.path(key).read_bytes() == data


def test_a_closed_blocking_writer_refuses_writes(files: storage.LocalStorage) -> None:
    _, writer = _writer(files)
    blocking = storage.BlockingWriter(writer)
    blocking.write(b"ok")
    blocking.close()
    with pytest.raises(storage.StorageError, match="closed"):
        blocking.write(b"late")
    asyncio.run(writer.abort())
