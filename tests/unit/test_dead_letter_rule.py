"""The contract between the replay rule (``deadletters.rule``) and the store below it
(``store.dead_letters``): the store sees only ``Decision.change``, so that alone must say
whether a message is published and how the row changes; and an ``Action`` must land in
the columns its fields name. Pure: no broker, no database."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bgworker.contract import states
from bgworker.ops.deadletters import actions, letters, rule
from bgworker.store import dead_letters, queries

STATUSES = st.one_of(st.none(), st.sampled_from(list(states.Status)), st.text(max_size=20))


@given(status=STATUSES, cancel=st.booleans(), lease=st.booleans(), force=st.booleans())
def test_the_row_change_says_exactly_what_the_plan_publishes(
    status: str | None, cancel: bool, lease: bool, force: bool
) -> None:
    decision = rule.decide("r1", status, cancel_requested=cancel, lease_live=lease, force=force)
    assert decision.change.publishes == decision.plan.publishes
    expected = {
        rule.Plan.REPLAY: dead_letters.RowChange.REQUEUE,
        rule.Plan.FORCE: dead_letters.RowChange.FORCE,
        rule.Plan.REPUBLISH: dead_letters.RowChange.REPUBLISH,
    }.get(decision.plan, dead_letters.RowChange.NONE)
    assert decision.change is expected
    if status in states.DONE:  # a served request never runs twice, forced or not
        assert decision.change is dead_letters.RowChange.NONE and decision.removes
    elif (status == states.Status.CANCELLED or cancel) and not force:
        assert decision.plan is rule.Plan.REFUSE and not decision.removes


def test_the_store_asks_the_rule_with_the_row_it_locked() -> None:
    state = dead_letters.RequestState(
        status=states.Status.CANCELLED, attempts=3, cancel_requested=False, lease_live=False
    )
    assert rule.decide_for("r1", state, force=False).plan is rule.Plan.REFUSE
    assert rule.decide_for("r1", state, force=True).change is dead_letters.RowChange.FORCE


def test_an_action_fills_the_columns_its_fields_name() -> None:
    request_id = uuid.uuid4()
    failed_at = datetime(2026, 1, 2, tzinfo=UTC)
    letter = letters.Letter(
        key=str(request_id),
        request_id=request_id,
        file_type="report",
        reason=states.Reason.MAX_ATTEMPTS,
        error_class="RuntimeError",
        error="boom",
        attempts=3,
        first_death=None,
        last_death=failed_at,
        worker="w1",
        size=2,
    )
    action = dead_letters.Action(
        kind=dead_letters.ActionKind.REPLAY,
        letter=actions.facts(letter),
        actor="cli:test",
        request_id=request_id,
        detail="attempts reset",
        previous_status=states.Status.FAILED,
        previous_attempts=3,
        attempt_log=[{"attempt": 1}],
    )
    sql = queries.QUERIES["dlq_insert_action"]
    listed = re.search(r"INSERT INTO bgworker_dlq_actions\s*\(([^)]*)\)", sql)
    assert listed is not None
    columns = [c.strip() for c in listed[1].split(",")]
    bound_sql, *values = action.insert()
    assert bound_sql == sql
    assert dict(zip(columns, values, strict=True)) == {
        "request_id": request_id,
        "letter_key": str(request_id),
        "action": "replay",
        "actor": "cli:test",
        "detail": "attempts reset",
        "previous_status": "failed",
        "previous_attempts": 3,
        "reason": "max_attempts",
        "error_class": "RuntimeError",
        "error": "boom",
        "letter_failed_at": failed_at,
        "attempt_log": [{"attempt": 1}],
    }
    placeholders = re.findall(r"\$(\d+)", sql)
    assert [int(n) for n in placeholders] == list(range(1, len(columns) + 1))


def test_every_sql_file_is_loaded_and_a_name_defined_twice_is_refused() -> None:
    assert {"dlq_insert_action", "dlq_requeue", "list_requests_by_status", "get_request"} <= set(
        queries.QUERIES
    )
    with pytest.raises(ValueError, match="defined twice"):
        queries.parse("-- name: twice\nSELECT 1;\n-- name: twice\nSELECT 2;")
