"""The console's search parameters come from anyone's query string: any value is either a
search or a 400, never a crash."""

from __future__ import annotations

import uuid

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from multidict import MultiDict

from bgworker.contract import states
from bgworker.web import admin_requests

NAMES = ["id", "requester", "file_type", "status", "page", "other"]
VALUES = st.one_of(
    st.text(),
    st.sampled_from([str(uuid.uuid4()), "1", "2", "0", "-1", "²", "10000000", *states.Status]),
)


@given(st.dictionaries(st.sampled_from(NAMES), VALUES))
def test_any_query_is_a_search_or_a_400(query: dict[str, str]) -> None:
    try:
        wanted, page = admin_requests._search_of(MultiDict(query))
    except web.HTTPBadRequest:
        return
    assert 1 <= page <= 10**6
    assert wanted.status is None or wanted.status in set(states.Status)
    for name in ("requester", "file_type"):
        value = getattr(wanted, name)
        assert value is None or (value == value.strip() and value)


def test_filters_are_read_as_given() -> None:
    request_id = uuid.uuid4()
    query = MultiDict(
        {"id": f" {request_id} ", "requester": "ann", "status": "failed", "page": "3"}
    )
    wanted, page = admin_requests._search_of(query)
    assert (wanted.id, wanted.requester, wanted.file_type) == (request_id, "ann", None)
    assert wanted.status == states.Status.FAILED and page == 3
    for page_text in ("²", "٣"):  # digits to str.isdigit; int() refuses the first
        with pytest.raises(web.HTTPBadRequest):
            admin_requests._search_of(MultiDict({"page": page_text}))
