"""The handler API without services (issue 12, item 1): lifespans and resources, progress
counts, ``ctx.check()`` for async and sync handlers, declared extension and content type."""

from __future__ import annotations

import asyncio
import contextlib
import math
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bgworker import handlers, storage
from bgworker import settings as settings_mod
from bgworker.contract import events, progress
from bgworker.handlers import execution as execution_mod

SETTINGS = settings_mod.Settings(namespace="unit")


def _ctx(**kwargs: Any) -> handlers.JobContext:
    event = events.FileRequested(id=uuid.uuid4(), file_type="x", filename="f.bin")
    return handlers.JobContext(event, **kwargs)


# --- Lifespans ------------------------------------------------------------------------------


def _recording(name: str, log: list[str], yields: Any) -> handlers.Lifespan:
    @contextlib.asynccontextmanager
    async def lifespan(settings: settings_mod.Settings) -> AsyncIterator[Any]:
        assert settings is SETTINGS
        log.append(f"open {name}")
        try:
            yield yields
        finally:
            log.append(f"close {name}")

    return lifespan


async def test_merged_registries_run_every_lifespan_and_close_them_in_reverse() -> None:
    log: list[str] = []
    first = handlers.Registry(lifespan=_recording("db", log, {"pool": "P"}))
    second = handlers.Registry()
    second.lifespan(_recording("http", log, {"client": "C"}))
    second.lifespan(_recording("nothing", log, None))
    combined = handlers.Registry()
    combined.merge(first)
    combined.merge(second)

    async with combined.resources(SETTINGS) as resources:
        assert dict(resources) == {"pool": "P", "client": "C"}
        assert log == ["open db", "open http", "open nothing"]
        with pytest.raises(TypeError):
            resources["pool"] = "replaced"  # type: ignore[index]
    assert log[3:] == ["close nothing", "close http", "close db"]


async def test_an_async_generator_function_is_a_lifespan_too() -> None:
    registry = handlers.Registry()
    closed: list[bool] = []

    @registry.lifespan
    async def resources(settings: settings_mod.Settings) -> AsyncIterator[dict[str, int]]:
        yield {"answer": 42}
        closed.append(True)

    async with registry.resources(SETTINGS) as opened:
        assert opened["answer"] == 42
    assert closed == [True]


async def test_no_lifespan_means_no_resources() -> None:
    async with handlers.Registry().resources(SETTINGS) as opened:
        assert dict(opened) == {}


async def test_two_lifespans_yielding_one_name_fail_and_the_first_is_closed() -> None:
    log: list[str] = []
    registry = handlers.Registry(lifespan=_recording("a", log, {"pool": 1}))
    registry.lifespan(_recording("b", log, {"pool": 2, "other": 3}))
    with pytest.raises(ValueError, match="yields 'pool', already yielded"):
        async with registry.resources(SETTINGS):
            pytest.fail("must not start")
    assert log == ["open a", "open b", "close b", "close a"]


async def test_a_lifespan_yielding_no_mapping_is_refused() -> None:
    registry = handlers.Registry(lifespan=_recording("a", [], ["pool"]))
    with pytest.raises(TypeError, match="yielded a list: yield a mapping"):
        async with registry.resources(SETTINGS):
            pytest.fail("must not start")


async def test_a_lifespan_that_fails_to_open_closes_those_opened_before() -> None:
    log: list[str] = []
    registry = handlers.Registry(lifespan=_recording("a", log, {"a": 1}))

    @registry.lifespan
    async def broken(settings: settings_mod.Settings) -> AsyncIterator[None]:
        raise ConnectionRefusedError("no database")
        yield  # an async generator

    with pytest.raises(ConnectionRefusedError):
        async with registry.resources(SETTINGS):
            pytest.fail("must not start")
    assert log == ["open a", "close a"]


def test_ctx_resource_is_typed_access_with_clear_errors() -> None:
    ctx = _ctx(resources={"pool": "a pool", "n": 3})
    assert ctx.resource("pool", str) == "a pool"
    with pytest.raises(LookupError, match=r"no resource 'client' \(resources: n, pool\)"):
        ctx.resource("client", object)
    with pytest.raises(TypeError, match="resource 'n' is a int, not str"):
        ctx.resource("n", str)
    assert dict(_ctx().resources) == {} and _ctx().settings is None


# --- Progress -------------------------------------------------------------------------------


@given(st.integers(min_value=-(2**70), max_value=2**70), st.integers(-(2**70), 2**70) | st.none())
def test_progress_counts_are_accepted_exactly_when_they_make_sense(
    done: int, total: int | None
) -> None:
    ctx = _ctx()
    valid = done >= 0 and (total is None or 0 <= done <= total)
    if not valid:
        with pytest.raises(ValueError, match=r"^progress: "):
            ctx.progress(done, total)
        assert ctx.reported is None
        return
    ctx.progress(done, total)
    reported = ctx.reported
    assert reported is not None and (reported.done, reported.total) == (done, total)
    if total is None:
        assert reported.fraction is None
    else:
        assert reported.fraction == (done / total if total else 1.0)
        shown = progress.percent(reported.fraction)
        assert shown is not None and 0 <= shown <= 100 and round(shown, 1) == shown


@pytest.mark.parametrize("bad", [True, 1.5, "3", None])
def test_progress_refuses_counts_that_are_not_integers(bad: Any) -> None:
    with pytest.raises(ValueError, match="must be an integer"):
        _ctx().progress(bad, 10)


@given(
    st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**1100), 2**1100),
    st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**1100), 2**1100),
)
def test_report_progress_never_raises_and_stays_between_0_and_1(done: Any, total: Any) -> None:
    ctx = _ctx()
    ctx.report_progress(done, total)
    reported = ctx.reported
    if reported is not None:
        assert reported.fraction is not None
        assert 0.0 <= reported.fraction <= 1.0 and math.isfinite(reported.fraction)


def test_report_progress_keeps_counts_when_it_gets_integers() -> None:
    ctx = _ctx()
    ctx.report_progress(13, 20)
    assert ctx.reported == progress.Progress(13, 20, 0.65)
    ctx.report_progress(0.5)
    assert ctx.reported == progress.Progress(None, None, 0.5)


def test_percent_is_clean() -> None:
    # What a float4 column made of 0.65 (issue 12): shown as 65.0.
    assert progress.percent(0.6499999761581421) == 65.0
    assert progress.percent(1 / 3) == 33.3
    assert progress.percent(None) is None


# --- ctx.check() ----------------------------------------------------------------------------


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    now = [1000.0]
    # time.monotonic itself (the module handlers reads it from): only synchronous tests use
    # this fixture, so no event loop sees the frozen clock.
    monkeypatch.setattr("bgworker.handlers.registry.time.monotonic", lambda: now[0])
    yield now


def test_check_raises_past_the_time_limit_before_the_worker_notices(clock: list[float]) -> None:
    ctx = _ctx()
    ctx.start(30)
    clock[0] += 29.9
    ctx.check()
    assert not ctx.cancelled
    clock[0] += 0.1
    with pytest.raises(handlers.TimeLimitError, match=r"^exceeded its time limit of 30\.0 s$"):
        ctx.check()
    assert ctx.cancelled  # and it stays stopped
    with pytest.raises(handlers.TimeLimitError):
        ctx.check()


def test_no_time_limit_means_check_never_times_out(clock: list[float]) -> None:
    ctx = _ctx()
    ctx.start(None)
    clock[0] += 10**9
    ctx.check()


async def test_await_check_gives_the_loop_a_turn() -> None:
    ctx = _ctx()
    ran: list[bool] = []

    async def other() -> None:
        ran.append(True)

    task = asyncio.create_task(other())
    await ctx.check()
    assert ran == [True] and task.done()
    ctx.stop(handlers.StoppedError("cancelled"))
    with pytest.raises(handlers.StoppedError, match=r"^cancelled$"):
        await ctx.check()


async def test_a_cpu_bound_async_handler_awaiting_check_ends_at_its_time_limit(
    tmp_path: Any,
) -> None:
    loops: list[int] = []

    async def busy(ctx: handlers.JobContext, out: storage.FileWriter) -> None:
        while True:
            loops.append(1)
            sum(range(1000))  # CPU work, no I/O
            await ctx.check()

    files = storage.LocalStorage(tmp_path)
    files.ensure()
    writer = files.writer(storage.key_for(uuid.uuid4(), uuid.uuid4()))
    ctx = _ctx()
    registration = handlers.Registration("busy", busy, None, time_limit=0.2)
    with pytest.raises(handlers.TimeLimitError, match=r"^exceeded its time limit of 0\.2 s$"):
        async with asyncio.timeout(10):
            await execution_mod.Execution(1).call(registration, ctx, writer)
    await writer.abort()
    assert ctx.cancelled and len(loops) > 1


# --- Declared extension and content type ----------------------------------------------------


async def _noop(ctx: handlers.JobContext, out: storage.FileWriter) -> None:
    await out.write(b"")


def test_a_handler_declares_its_extension_and_content_type() -> None:
    registry = handlers.Registry()
    registry.handler("report", extension="xlsx", content_type="application/vnd.ms-excel")(_noop)
    merged = handlers.Registry()
    merged.merge(registry)
    found = merged.find("report")
    assert found is not None
    assert (found.extension, found.content_type) == ("xlsx", "application/vnd.ms-excel")


@pytest.mark.parametrize("extension", ["", ".csv", "a/b", "x" * 17, "tar.gz", "cs v", "é"])
def test_a_bad_extension_is_refused_at_registration(extension: str) -> None:
    with pytest.raises(ValueError, match="extension must be"):
        handlers.Registry().register("r", _noop, extension=extension)


@pytest.mark.parametrize("content_type", ["text", "text/csv\r\nX-Evil: 1", "", "text/ csv"])
def test_a_bad_content_type_is_refused_at_registration(content_type: str) -> None:
    with pytest.raises(ValueError, match="content_type"):
        handlers.Registry().register("r", _noop, content_type=content_type)


def _unnamed(file_type: str = "report") -> events.FileRequested:
    return events.FileRequested(id=uuid.uuid4(), file_type=file_type)


def test_with_defaults_fills_only_what_the_producer_left_out() -> None:
    registry = handlers.Registry()
    registry.handler("report", extension="csv", content_type="text/csv")(_noop)
    registration = registry.find("report")
    filled = handlers.with_defaults(_unnamed(), registration)
    assert (filled.filename, filled.content_type) == ("report.csv", "text/csv")
    assert handlers.with_defaults(filled, registration) == filled  # a redelivery: the same
    given_ = _unnamed().model_copy(update={"filename": "mine.txt", "content_type": "text/plain"})
    assert handlers.with_defaults(given_, registration) == given_
    assert handlers.served_names(given_, registration) == ("mine.txt", "text/plain")
    bare = handlers.with_defaults(_unnamed(), None)  # unknown file type: it fails anyway
    assert (bare.filename, bare.content_type) == ("report", events.DEFAULT_CONTENT_TYPE)


@given(
    st.from_regex(r"\A[a-z0-9][a-z0-9_.-]{0,63}\Z"),
    st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_-]{0,15}\Z") | st.none(),
)
def test_a_filled_filename_always_passes_the_contract(
    file_type: str, extension: str | None
) -> None:
    registry = handlers.Registry()
    registry.register(file_type, _noop, extension=extension)
    filled = handlers.with_defaults(_unnamed(file_type), registry.find(file_type))
    body = filled.model_dump_json().encode()
    assert events.parse_file_requested(body) == filled
