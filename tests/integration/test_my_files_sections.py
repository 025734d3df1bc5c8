"""The my-files page's bundles and schedules (issue 23, part 3) end to end: a real worker
records the bundles (RabbitMQ, PostgreSQL, aiosmtpd), the server answers over a socket.
The page lists the address's own live bundles (with a working link to each one's page) and
active or paused schedules; "End this schedule" ends it as the unsubscribe link does; one
address never sees nor ends another's."""

from __future__ import annotations

import html
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.cli.smtp_sink import SmtpSink
from bgworker.contract import bundles
from bgworker.contract import schedules as contract
from bgworker.links import tokens
from bgworker.messaging import publisher
from bgworker.web import my_files
from tests import helpers
from tests.helpers import AMQP_URL, StartServer, StartWorker, must_match, wait_until
from tests.integration.downloads import fetch
from tests.integration.test_my_files import HTML, _hostile, _page, _post

pytestmark = pytest.mark.usefixtures("amqp")

SCRIPT = "<script>alert(1)</script>"


async def _bundle(settings: settings_mod.Settings, db: store.Store, email: str) -> uuid.UUID:
    """A bundle of two small parts for ``email``, recorded and ended by the worker."""
    bundle = bundles.BundleRequested.model_validate(
        {
            "id": str(uuid.uuid4()),
            "filename": f"{email.split('@')[0]}-exports.zip",
            "description": f"Q3 {SCRIPT}",
            "requester": {"email": email, "language": "en", "timezone": "Europe/Berlin"},
            "parts": [
                {"file_type": "blob", "criteria": {"size": 100, "seed": 1}, "filename": "a.bin"},
                {"file_type": "blob", "criteria": {"size": 200, "seed": 2}, "filename": "b.bin"},
            ],
        }
    )
    async with publisher.Publisher(
        AMQP_URL, namespace=settings.namespace, queue_type=settings.queue_type
    ) as pub:
        await pub.publish_bundle(bundle)

    async def ended() -> bool:
        found = await db.bundles.get(bundle.id)
        return found is not None and found.finished_at is not None

    await wait_until(ended, timeout=30)
    return bundle.id


async def _schedule(db: store.Store, email: str, description: str = SCRIPT) -> uuid.UUID:
    request = contract.ScheduleRequested.model_validate(
        {
            "id": str(uuid.uuid4()),
            "cron": "0 8 * * 1",
            "request": {
                "file_type": "blob",
                "criteria": {"size": 10},
                "description": description,
                "requester": {"email": email, "timezone": "America/New_York"},
            },
        }
    )
    assert await db.schedules.create(request, datetime.now(UTC))
    return request.id


async def test_the_page_lists_the_addresss_bundles_and_schedules_and_ends_a_schedule(
    settings: settings_mod.Settings,
    start_server: StartServer,
    start_worker: StartWorker,
    db: store.Store,
    smtp_sink: SmtpSink,
) -> None:
    base = await start_server()
    public = settings.web.public_url
    await start_worker()
    a_bundle = await _bundle(settings, db, "Ann@Example.com")
    b_bundle = await _bundle(settings, db, "bob@example.com")
    a_schedule = await _schedule(db, "ANN@example.com")
    b_schedule = await _schedule(db, "bob@example.com", "bob's weekly")
    signer = tokens.Signer(settings.tokens)
    token = signer.my_files("ann@example.com")

    # JSON: both sections, only Ann's; the bundle's link opens its page.
    doc = await _page(base, token)
    [bundle] = doc["sections"]["bundles"]
    assert (bundle["id"], bundle["filename"]) == (str(a_bundle), "Ann-exports.zip")
    assert (bundle["parts"], bundle["done"], bundle["ready"]) == (2, 2, 2)
    assert bundle["description"] == f"Q3 {SCRIPT}" and "requester_id" not in bundle
    status, _, body = await fetch("GET", base + bundle["bundle_url"].removeprefix(public))
    assert status == 200 and json.loads(body)["id"] == str(a_bundle)
    [schedule] = doc["sections"]["schedules"]
    assert schedule["id"] == str(a_schedule) and schedule["status"] == "active"
    assert (schedule["cron"], schedule["timezone"]) == ("0 8 * * 1", "America/New_York")
    next_run = datetime.fromisoformat(schedule["next_run_at"])
    assert next_run > datetime.now(UTC) and next_run.astimezone(UTC).hour in (12, 13)
    assert "8:00" in schedule["next_run"]  # shown in the schedule's own timezone

    # The page: escaped, the bundle's relative link works in a browser, nothing of Bob's.
    status, _, body = await fetch("GET", f"{base}/my-files/{token}", headers=HTML)
    page = body.decode()
    assert status == 200 and SCRIPT not in page
    # The bundle's, its two parts' (listed as files too) and the schedule's.
    assert page.count(html.escape(SCRIPT)) == 4
    assert "Files done: 2 of 2" in page and "End this schedule" in page
    href = html.unescape(must_match(r'class="button bundle-link" href="\.\./([^"]+)"', page)[1])
    status, _, body = await fetch("GET", f"{base}/{href}", headers=HTML)
    assert status == 200 and html.escape(f"Q3 {SCRIPT}") in body.decode()
    for other in (b_bundle, b_schedule, "bob"):
        assert str(other) not in page

    # Ann's token cannot end Bob's schedule (nor an unknown one): 404, nothing changes.
    for target in (b_schedule, uuid.uuid4(), "not-a-uuid"):
        status, _, body = await _post(base, "end-schedule", token, target)
        assert (status, json.loads(body)["note"]) == (404, "not-yours"), target
    # A cross-site post with her valid token is refused before anything is read.
    status, _, _ = await _post(base, "end-schedule", token, a_schedule, Origin="https://x.example")
    assert status == 403
    for kept in (a_schedule, b_schedule):
        assert (await db.schedules.get(kept)).status == "active"  # type: ignore[union-attr]

    # Her own, from the page's form: ended as the unsubscribe link ends it.
    status, hdrs, _ = await _post(base, "end-schedule", token, a_schedule, **HTML, Origin=base)
    assert (status, hdrs["Location"]) == (303, f"{token}?note=schedule-ended")
    ended = await db.schedules.get(a_schedule)
    assert ended is not None and (ended.status, ended.ended_reason) == ("ended", "unsubscribed")
    assert ended.next_run_at is None
    status, _, body = await fetch("GET", f"{base}/my-files/{hdrs['Location']}", headers=HTML)
    assert 'data-note="schedule-ended"' in body.decode()
    assert str(a_schedule) not in body.decode().split('id="note"')[1]  # no longer listed
    assert (await _page(base, token))["sections"]["schedules"] == []
    status, _, body = await _post(base, "end-schedule", token, a_schedule)
    assert (status, json.loads(body)["note"]) == (409, "schedule-already-ended")

    # Bob's page: his bundle and schedule, none of Ann's; his token ends his schedule.
    b_token = signer.my_files("bob@example.com")
    doc = await _page(base, b_token)
    assert [b["id"] for b in doc["sections"]["bundles"]] == [str(b_bundle)]
    assert [s["id"] for s in doc["sections"]["schedules"]] == [str(b_schedule)]
    status, _, body = await _post(base, "end-schedule", b_token, b_schedule)
    assert (status, json.loads(body)["note"]) == (200, "schedule-ended")

    # A bundle whose parts are past their lifetime is no longer listed.
    await db.pool.execute(
        "UPDATE bgworker_requests SET expires_at = now() WHERE bundle_id = $1", a_bundle
    )
    assert (await _page(base, token))["sections"]["bundles"] == []


@pytest.mark.parametrize(
    ("language", "heading", "button", "paused"),
    [
        ("de", "Ihre Zeitpläne", "Diesen Zeitplan beenden", "Pausiert"),
        ("fr", "Vos planifications", "Mettre fin à cette planification", "En pause"),
        ("nl", "Uw schema\u2019s", "Dit schema beëindigen", "Gepauzeerd"),
    ],
)
async def test_the_sections_speak_the_page_language_and_a_paused_schedule_has_no_next_run(
    language: str,
    heading: str,
    button: str,
    paused: str,
    settings: settings_mod.Settings,
    start_server: StartServer,
    db: store.Store,
) -> None:
    base = await start_server()
    schedule = await _schedule(db, "cy@x.org", "monthly")
    assert await db.schedules.pause(schedule)
    token = tokens.Signer(settings.tokens).my_files("cy@x.org")
    status, _, body = await fetch(
        "GET", f"{base}/my-files/{token}", headers={**HTML, "Accept-Language": language}
    )
    page = body.decode()
    assert status == 200 and heading in page and button in page and paused in page
    assert 'class="next-run"' not in page
    [listed] = (await _page(base, token))["sections"]["schedules"]
    assert (listed["status"], listed["next_run_at"]) == ("paused", None)


async def test_hostile_end_schedule_posts_never_fail_nor_end_anothers_schedule(
    settings: settings_mod.Settings, start_server: StartServer, db: store.Store
) -> None:
    base = await start_server()
    theirs = await _schedule(db, "b@x.org")
    for token, ident, _ in _hostile(helpers.examples(40)):
        status, _, _ = await fetch(
            "POST", f"{base}/my-files/end-schedule", data={"token": token, "id": ident}
        )
        assert status in (400, 404, 410), (token, ident)
    # A valid token of another address, on the schedule's own id.
    a_token = tokens.Signer(settings.tokens).my_files("a@x.org")
    status, _, _ = await _post(base, "end-schedule", a_token, theirs)
    assert status == 404
    found = await db.schedules.get(theirs)
    assert found is not None and found.status == "active"
    doc: dict[str, Any] = await _page(base, a_token)
    assert doc["sections"] == {"bundles": [], "schedules": []}


async def test_a_further_section_plugs_in_with_its_template_and_the_address(
    settings: settings_mod.Settings,
    start_server: StartServer,
    db: store.Store,
    tmp_path: Any,
) -> None:
    """The hook bundles and schedules use (and a further one may): a Section's loader gets
    the token's address only, its template (here from BGWORKER_TEMPLATE_DIR) renders its
    items, escaped, and the JSON answer carries them under its name."""
    (tmp_path / "pages").mkdir()
    (tmp_path / "pages" / "reports.html.j2").write_text(
        '<h2>Reports</h2>{% for s in section["items"] %}<p class="report">{{ s.name }}</p>'
        "{% endfor %}"
    )
    settings.template_dir = tmp_path
    seen: list[str] = []

    async def load(db_: store.Store, email: str, locale: str) -> list[dict[str, Any]]:
        seen.append(email)
        return [{"name": "<weekly> report"}]

    section = my_files.Section("reports", "pages/reports.html.j2", load)
    my_files.SECTIONS.append(section)
    try:
        base = await start_server()
        token = tokens.Signer(settings.tokens).my_files("Dee@X.org")
        status, _, body = await fetch("GET", f"{base}/my-files/{token}", headers=HTML)
        assert status == 200
        assert '<section id="reports">' in body.decode()
        assert '<p class="report">&lt;weekly&gt; report</p>' in body.decode()
        doc = await _page(base, token)
        assert doc["sections"] == {
            "bundles": [],
            "schedules": [],
            "reports": [{"name": "<weekly> report"}],
        }
    finally:
        my_files.SECTIONS.remove(section)
    assert seen == ["dee@x.org", "dee@x.org"]
