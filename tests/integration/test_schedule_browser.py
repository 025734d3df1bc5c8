"""Real Chromium on a schedule's unsubscribe page: opening the link (GET) ends nothing and
shows the schedule; its button (a POST, under the page's CSP) ends it. Screenshots go to
the test's tmp dir (``pytest --basetemp`` to keep them; docs/schedule-*.png came so)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.contract import schedules as contract
from bgworker.links import tokens
from tests.browser import MARKS, browser
from tests.helpers import StartServer

pytestmark = MARKS
__all__ = ["browser"]  # the fixture, imported


async def test_unsubscribe_page_confirms_then_the_button_ends_the_schedule(
    settings: settings_mod.Settings,
    start_server: StartServer,
    db: store.Store,
    browser: Any,
    tmp_path: Path,
) -> None:
    base = await start_server()
    request = contract.ScheduleRequested.model_validate(
        {
            "id": str(uuid.uuid4()),
            "cron": "0 8 * * 1",
            "request": {
                "file_type": "login_events",
                "description": "Weekly sign-in report <script>alert(1)</script>",
                "requester": {"email": "ann@example.com", "timezone": "Europe/Paris"},
            },
        }
    )
    assert await db.schedules.create(request, datetime.now(UTC))
    token = tokens.Signer(settings.tokens).unsubscribe(request.id)
    page = await browser.new_page(viewport={"width": 900, "height": 640})
    dialogs: list[str] = []
    page.on("dialog", lambda d: dialogs.append(d.message))
    await page.goto(tokens.unsubscribe_url(base, token))
    await page.wait_for_selector("main[data-kind=confirm]")
    assert await page.inner_text("h1") == "Stop this schedule?"
    text = await page.inner_text("main")
    assert "0 8 * * 1" in text and "Europe/Paris" in text and "<script>" in text  # as text
    await page.screenshot(path=tmp_path / "schedule-unsubscribe-confirm.png")
    schedule = await db.schedules.get(request.id)
    assert schedule is not None and schedule.status == "active"  # a GET ends nothing
    await page.click("button[type=submit]")
    await page.wait_for_selector("main[data-kind=ended]")
    assert await page.inner_text("h1") == "Schedule stopped"
    await page.screenshot(path=tmp_path / "schedule-unsubscribe-ended.png")
    schedule = await db.schedules.get(request.id)
    assert schedule is not None and schedule.status == "ended"
    assert schedule.ended_reason == "unsubscribed"
    assert dialogs == []  # the description's script never ran
