"""Fire times of schedules (``bgworker.contract.schedules``): hypothesis over cron
expressions and time zones, daylight saving transitions included, and the contract of
``ScheduleRequested`` against hostile input."""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from bgworker import settings as settings_mod
from bgworker.contract import schedules
from bgworker.links import tokens

# Zones with DST of one hour (both hemispheres), half an hour (Lord Howe), none, and an
# odd offset: the transitions are where fire times go wrong.
ZONES = (
    "UTC",
    "Europe/Berlin",
    "Europe/London",
    "America/New_York",
    "America/Santiago",
    "Australia/Sydney",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
    "Asia/Kathmandu",
)
# Starts near transitions of 2026 (each zone's ones fall within a few days of these).
TRANSITIONS = (
    datetime(2026, 3, 8, tzinfo=UTC),
    datetime(2026, 3, 29, tzinfo=UTC),
    datetime(2026, 4, 5, tzinfo=UTC),
    datetime(2026, 9, 6, tzinfo=UTC),
    datetime(2026, 10, 4, tzinfo=UTC),
    datetime(2026, 10, 25, tzinfo=UTC),
    datetime(2026, 11, 1, tzinfo=UTC),
)


@dataclass(frozen=True)
class Cron:
    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday, as cron counts
    days_star: bool
    weekdays_star: bool
    # Minute and hour fields name values (neither starts with *): DST rules of fixed times.
    hours_fixed: bool


@st.composite
def field(
    draw: Any, low: int, high: int, *, star_weight: int = 2, top: int | None = None
) -> tuple[str, frozenset[int], bool]:
    """(text, values, is_star) of one cron field; ``top``: what * covers, when more than
    the values drawn (days: 31, drawn up to 28 so every month has them)."""
    kind = draw(st.sampled_from(["star"] * star_weight + ["one", "list", "range", "step"]))
    if kind == "star":
        return "*", frozenset(range(low, (top or high) + 1)), True
    if kind == "one":
        v = draw(st.integers(low, high))
        return str(v), frozenset({v}), False
    if kind == "list":
        vs = sorted(draw(st.sets(st.integers(low, high), min_size=2, max_size=4)))
        return ",".join(map(str, vs)), frozenset(vs), False
    if kind == "range":
        a = draw(st.integers(low, high))
        b = draw(st.integers(a, high))
        return f"{a}-{b}", frozenset(range(a, b + 1)), False
    step = draw(st.integers(2, max(2, (high - low) // 2 + 1)))
    # Starts with *: cron's "star" for the day-of-month/day-of-week rule, as Vixie cron.
    return f"*/{step}", frozenset(range(low, (top or high) + 1, step)), True


@st.composite
def crons(draw: Any) -> Cron:
    m, minutes, _ = draw(field(0, 59, star_weight=1))
    h, hours, _ = draw(field(0, 23))
    d, days, d_star = draw(field(1, 28, star_weight=6, top=31))
    mo, months, _ = draw(field(1, 12, star_weight=8))
    w, weekdays, w_star = draw(field(0, 6, star_weight=4))
    fixed = not m.startswith("*") and not h.startswith("*")
    return Cron(
        f"{m} {h} {d} {mo} {w}", minutes, hours, days, months, weekdays, d_star, w_star, fixed
    )


def matches(cron: Cron, local: datetime) -> bool:
    weekday = (local.weekday() + 1) % 7
    day_ok = local.day in cron.days
    weekday_ok = weekday in cron.weekdays
    if cron.days_star or cron.weekdays_star:
        date_ok = day_ok and weekday_ok
    else:  # both restricted: either one (cron's rule)
        date_ok = day_ok or weekday_ok
    return (
        local.minute in cron.minutes
        and local.hour in cron.hours
        and local.month in cron.months
        and date_ok
        and local.second == 0
    )


def is_transition(zone: ZoneInfo, moment: datetime) -> bool:
    before = (moment - timedelta(microseconds=1)).astimezone(zone).utcoffset()
    return before != moment.astimezone(zone).utcoffset()


starts = st.builds(
    lambda base, hours: base + timedelta(hours=hours, seconds=0),
    st.sampled_from(TRANSITIONS),
    st.integers(-72, 72),
) | st.datetimes(
    min_value=datetime(2025, 1, 1), max_value=datetime(2028, 1, 1), timezones=st.just(UTC)
)


@given(crons(), st.sampled_from(ZONES), starts)
def test_fire_times_increase_and_land_on_the_expression(
    cron: Cron, zone: str, start: datetime
) -> None:
    tz = ZoneInfo(zone)
    times = []
    for moment in schedules.fire_times(cron.text, zone, start):
        times.append(moment)
        if len(times) == 12:
            break
    assert times[0] > start
    assert all(a < b for a, b in itertools.pairwise(times))  # strictly increasing
    for moment in times:
        assert moment.tzinfo is UTC
        local = moment.astimezone(tz)
        # Either the wall time is one the expression names, or it is the first instant
        # after a spring-forward gap that swallowed the wall time named.
        assert matches(cron, local) or is_transition(tz, moment), (cron.text, zone, local)
    if cron.hours_fixed:
        # A wall time repeated by a fall-back transition fires once (its first occurrence).
        walls = [m.astimezone(tz).replace(tzinfo=None) for m in times]
        assert len(walls) == len(set(walls)), (cron.text, zone, walls)


@given(crons(), st.sampled_from(ZONES), starts, st.integers(0, 500))
def test_due_is_the_latest_period_and_counts_the_rest(
    cron: Cron, zone: str, start: datetime, late_minutes: int
) -> None:
    first = schedules.next_fire(cron.text, zone, start)
    now = first + timedelta(minutes=late_minutes)
    due = schedules.Due(cron.text, zone, first, now)
    fired = [first]
    for moment in schedules.fire_times(cron.text, zone, first):
        if moment > now:
            break
        fired.append(moment)
    assert due.period == fired[-1] <= now
    assert due.missed == len(fired) - 1
    assert due.following > now
    assert due.following == schedules.next_fire(cron.text, zone, now)


def test_dst_rules_as_documented() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    # 02:30 does not exist on 2026-03-29: fires at 03:00 CEST, the first instant after.
    spring = schedules.next_fire(
        "30 2 * * *", "Europe/Berlin", datetime(2026, 3, 28, 12, tzinfo=UTC)
    )
    assert spring.astimezone(berlin).isoformat() == "2026-03-29T03:00:00+02:00"
    # 02:30 exists twice on 2026-10-25: fires once, at the first (CEST) one.
    autumn = list(
        zip(
            range(2),
            schedules.fire_times(
                "30 2 * * *", "Europe/Berlin", datetime(2026, 10, 24, 12, tzinfo=UTC)
            ),
            strict=False,
        )
    )
    assert [m.astimezone(berlin).isoformat() for _, m in autumn] == [
        "2026-10-25T02:30:00+02:00",
        "2026-10-26T02:30:00+01:00",
    ]
    # An hour of * follows elapsed time: both 02:30s of the repeated hour.
    every = schedules.fire_times(
        "30 * * * *", "Europe/Berlin", datetime(2026, 10, 24, 23, 45, tzinfo=UTC)
    )
    walls = [next(every).astimezone(berlin).isoformat() for _ in range(3)]
    assert walls == [
        "2026-10-25T02:30:00+02:00",
        "2026-10-25T02:30:00+01:00",
        "2026-10-25T03:30:00+01:00",
    ]


def test_a_long_downtime_is_bounded() -> None:
    # A minutely schedule down for a year: counted up to the cap, the latest period found.
    now = datetime(2026, 12, 7, 8, 30, 20, tzinfo=UTC)
    due = schedules.Due("* * * * *", "UTC", datetime(2025, 12, 1, tzinfo=UTC), now)
    assert due.period == datetime(2026, 12, 7, 8, 30, tzinfo=UTC)
    assert due.missed == schedules.MAX_COUNTED_MISSES
    assert due.following == datetime(2026, 12, 7, 8, 31, tzinfo=UTC)


def test_period_ids_are_deterministic_and_distinct() -> None:
    sid = uuid.uuid4()
    a = datetime(2026, 12, 7, 8, tzinfo=UTC)
    assert schedules.period_id(sid, a) == schedules.period_id(
        sid, a.astimezone(ZoneInfo("Asia/Tokyo"))
    )
    assert schedules.period_id(sid, a) != schedules.period_id(sid, a + timedelta(minutes=1))
    assert schedules.period_id(sid, a).version == 5


def _body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "cron": "0 8 * * 1",
        "request": {"file_type": "blob", "requester": {"timezone": "America/New_York"}},
    }
    body.update(overrides)
    return body


def test_a_schedule_reads_the_requesters_timezone() -> None:
    assert schedules.ScheduleRequested.model_validate(_body()).timezone == "America/New_York"
    plain = _body(request={"file_type": "blob"})
    assert schedules.ScheduleRequested.model_validate(plain).timezone == "UTC"


@pytest.mark.parametrize(
    "overrides",
    [
        {"cron": "0 8 * *"},  # four fields
        {"cron": "0 8 * * * *"},  # six (seconds) fields
        {"cron": "61 8 * * *"},
        {"cron": "@daily"},
        {"cron": "0 8 * * 1\n0 9 * * *"},
        {"request": {"file_type": "blob", "id": str(uuid.uuid4())}},  # id is per period
        {"request": {"file_type": "blob", "requested_at": "2026-01-01T00:00:00Z"}},
        {"request": {"file_type": "NOT A TYPE"}},
        {"request": {"file_type": "blob", "requester": {"timezone": "Mars/Olympus"}}},
        {"ends_at": "2026-01-01T00:00:00"},  # no offset
        {"extra": 1},
    ],
)
def test_invalid_schedules_are_refused(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        schedules.ScheduleRequested.model_validate(_body(**overrides))


@given(st.text(max_size=60))
def test_any_cron_text_is_accepted_or_refused_cleanly(text: str) -> None:
    try:
        schedules.parse_cron(text)
    except schedules.InvalidCronError:
        return
    # Accepted: it fires, in any zone.
    assert schedules.next_fire(text, "Europe/Berlin", datetime(2026, 1, 1, tzinfo=UTC))


def test_the_committed_schedule_schema_matches_the_model_and_validates() -> None:
    import json
    from pathlib import Path

    import jsonschema

    [(name, text)] = schedules.json_schemas().items()
    committed = Path(__file__).resolve().parents[2] / "schemas" / name
    assert committed.read_text(encoding="utf-8") == text, "run `bgworker schemas export`"
    schema = json.loads(text)
    checker = jsonschema.Draft202012Validator(schema)
    assert checker.is_valid(_body() | {"id": str(uuid.uuid4())})
    assert not checker.is_valid(_body(request={"file_type": "blob", "id": str(uuid.uuid4())}))
    assert not checker.is_valid(_body(cron="x" * 300))


def _signer(keys: list[str] | None = None) -> tokens.Signer:
    config = settings_mod.TokenSettings(secret_keys=keys or ["k1"])
    return tokens.Signer(config)


def test_unsubscribe_tokens_name_one_schedule_and_nothing_else() -> None:
    signer = _signer()
    sid = uuid.uuid4()
    token = signer.unsubscribe(sid)
    assert signer.verify_unsubscribe(token) == sid
    assert tokens.unsubscribe_url("https://x.example/", token).startswith(
        "https://x.example/schedules/unsubscribe?token="
    )
    for foreign in (
        signer.general(sid),  # a download token for the same uuid
        signer.bound(sid, "ann"),
        _signer(["other key"]).unsubscribe(sid),
        token + "=",
        token[:-1] + ("A" if token[-1] != "A" else "B"),
    ):
        with pytest.raises(tokens.SuspiciousTokenError):
            signer.verify_unsubscribe(foreign)
    # Rotation: a token signed with the older key still verifies with both listed.
    assert _signer(["new", "k1"]).verify_unsubscribe(token) == sid


@given(st.text(max_size=200))
def test_any_text_is_an_unsubscribe_token_or_refused_cleanly(text: str) -> None:
    try:
        _signer().verify_unsubscribe(text)
    except tokens.SuspiciousTokenError:
        return
    raise AssertionError(f"accepted {text!r}")
