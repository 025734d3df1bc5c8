"""The requester's page without services: who gets a page, and which page a row gives."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta

import markupsafe
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from hypothesis import given, settings
from hypothesis import strategies as st

from bgworker import languages, store
from bgworker.contract import states
from bgworker.links import state as link_states
from bgworker.web import keys, pages

NOW = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
CHROME = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8"
FIREFOX = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


def wants(accept: str | None, path: str = "/download/t") -> bool:
    headers = {"Accept": accept} if accept is not None else {}
    return pages.wants_html(make_mocked_request("GET", path, headers=headers))


@pytest.mark.parametrize("accept", [CHROME, FIREFOX, "text/html", "text/*", "text/html;q=0.5"])
def test_browsers_get_the_page(accept: str) -> None:
    assert wants(accept)


@pytest.mark.parametrize(
    "accept",
    [
        None,
        "",
        "*/*",  # curl, wget, requests, aiohttp
        "application/json",
        "application/json, text/html;q=0.9",
        "text/html, application/json",  # equal: the API answer wins
        "text/html;q=0, */*",
        "application/*",
        "text/html;q=nonsense, application/json;q=0.1",
    ],
)
def test_api_clients_keep_json(accept: str | None) -> None:
    assert not wants(accept)


def test_the_download_button_gets_the_file_even_from_a_browser() -> None:
    assert not wants(CHROME, f"/download/t?{pages.FILE_PARAM}=1")


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=200))
def test_any_accept_header_is_answered(accept: str) -> None:
    wants(accept)  # never raises, whatever a client sends


def row(status: states.Status, **changes: object) -> store.RequestRow:
    base = store.RequestRow(
        id=uuid.uuid4(),
        file_type="blob",
        status=status,
        event={},
        filename="a.bin",
        content_type="application/octet-stream",
        requester_id=None,
        requester_email=None,
        attempts=1,
        max_attempts=None,
        last_error_class=None,
        last_error=None,
        failure_reason=None,
        progress=None,
        progress_done=None,
        progress_total=None,
        size_bytes=None,
        sha256=None,
        storage_key=None,
        requested_at=NOW,
        received_at=NOW,
        started_at=None,
        finished_at=None,
        notified_at=None,
        expires_at=None,
        next_run_at=None,
        cancel_requested=False,
        lease_owner=None,
        lease_token=None,
        lease_expires_at=None,
        updated_at=NOW,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def page_of(r: store.RequestRow, now: datetime | None = None) -> pages.State:
    """The page a valid link to ``r`` gets, by the one decision the JSON answers use."""
    state = link_states.of_row(r, now)
    return pages.State(pages.KIND_OF[state], link_states.DOWNLOAD_STATUS[state], r)


def test_a_queued_row_is_waiting_in_the_queue() -> None:
    assert link_states.of_row(row(states.Status.QUEUED), NOW) == link_states.LinkState.WAITING
    assert page_of(row(states.Status.QUEUED), NOW).status == 409


@pytest.mark.parametrize("status", sorted(states.IN_PROGRESS))
def test_unfinished_rows_are_in_progress(status: states.Status) -> None:
    assert page_of(row(status), NOW).kind == pages.Kind.IN_PROGRESS


def test_ready_until_it_expires() -> None:
    ready = row(states.Status.READY, storage_key="k", expires_at=NOW + timedelta(seconds=1))
    assert page_of(ready, NOW).kind == pages.Kind.READY
    assert page_of(ready, NOW + timedelta(seconds=1)) == pages.State(pages.Kind.EXPIRED, 410, ready)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (states.Status.FAILED, pages.Kind.FAILED),
        (states.Status.CANCELLED, pages.Kind.CANCELLED),
        (states.Status.EXPIRED, pages.Kind.EXPIRED),
        (states.Status.READY, pages.Kind.GONE),  # ready without a stored file
    ],
)
def test_finished_rows(status: states.Status, kind: pages.Kind) -> None:
    state = page_of(row(status), NOW)
    assert (state.kind, state.status) == (kind, 410)


def test_every_status_has_a_page() -> None:
    for status in states.Status:
        assert page_of(row(status), NOW).kind in pages.Kind


def rendered(state: pages.State) -> str:
    app = web.Application()
    app[keys.TEMPLATE_DIR] = None
    request = make_mocked_request(
        "GET", "/download/tok", app=app, match_info={"token": "tok"}, headers={"Accept": CHROME}
    )
    response = pages.render(request, state)
    assert response.status == state.status and response.text is not None
    return response.text


@settings(deadline=None)  # the first page in a language compiles the templates
@given(
    filename=st.text(min_size=1, max_size=60),
    description=st.text(max_size=60),
    language=st.text(max_size=12),
    progress=st.floats(min_value=0, max_value=1),
)
def test_producer_text_never_becomes_markup(
    filename: str, description: str, language: str, progress: float
) -> None:
    """Filename, description and language come from the producer: escaped wherever they
    land, and the page keeps exactly its one script."""
    event = {"description": description, "requester": {"language": language}}
    for status in (states.Status.RUNNING, states.Status.FAILED):
        state = page_of(row(status, filename=filename, event=event, progress=progress))
        text = rendered(state)
        assert str(markupsafe.escape(filename)) in text
        assert text.count("<script") == (1 if status == states.Status.RUNNING else 0)
        assert f'<html lang="{languages.locale_for(language).replace("_", "-")}">' in text
