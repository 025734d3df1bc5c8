"""The scenarios' counters catch what they are there to catch: a second arrival of an email
or a webhook is a copy, and a report with a copy, a double build or a lost request fails."""

from __future__ import annotations

import uuid
from email.message import EmailMessage

import aiohttp
import aiosmtplib
import pytest

from bgworker.effects import webhooks
from tests.scenarios.harness import Report
from tests.scenarios.receivers import Mailbox, WebhookReceiver


async def test_the_same_email_twice_is_one_copy(mailbox: Mailbox) -> None:
    rid = uuid.uuid4()
    for _ in range(2):
        message = EmailMessage()
        message["From"], message["To"] = "bgworker@localhost", "user@example.com"
        message["Message-ID"] = f"<{rid}.ready@bgworker>"
        message.set_content("ready")
        await aiosmtplib.send(message, hostname=mailbox.host, port=mailbox.port)
    assert (mailbox.received, mailbox.copies) == (2, 1)
    assert mailbox.by_request == {rid: {f"<{rid}.ready@bgworker>"}}


async def test_the_same_webhook_twice_is_one_copy(hooks: WebhookReceiver) -> None:
    rid = uuid.uuid4()
    async with aiohttp.ClientSession() as session:
        for _ in range(2):
            body = {"id": str(rid), "download_url": "http://x/download/t"}
            async with session.post(hooks.url, json=body, headers={webhooks.ID: "w1"}) as r:
                assert r.status == 200
    assert (hooks.received, hooks.copies) == (2, 1)
    assert set(hooks.ready) == {rid}


@pytest.mark.parametrize(
    "change",
    [
        {"lost": ["x: running (expected ready)"]},
        {"double_builds": ["x: attempt 1 built [1, 1]"]},
        {"email_copies": 1},
        {"webhook_copies": 1},
        {"outbox_open": 1},
        {"bad_downloads": ["x: 200, 3 bytes"]},
        {"settle_seconds": None},
    ],
)
def test_a_report_with_a_loss_or_a_duplicate_fails(change: dict[str, object]) -> None:
    Report("clean", settle_seconds=1.0).check()
    report = Report("broken", settle_seconds=1.0)
    for name, value in change.items():
        setattr(report, name, value)
    with pytest.raises(AssertionError):
        report.check()
