"""notify.Mailer reuses SMTP connections: counted on a real aiosmtpd server (the sink)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from email.message import EmailMessage

import pytest

from bgworker import settings as settings_mod
from bgworker import worker
from bgworker.cli import smtp_sink as sink_mod
from bgworker.cli.smtp_sink import SmtpSink
from bgworker.effects import mail
from tests.helpers import Publish, StartWorker, wait_until

MakeMailer = Callable[..., mail.Mailer]


@pytest.fixture
async def make_mailer(smtp_sink: SmtpSink) -> AsyncIterator[MakeMailer]:
    made: list[mail.Mailer] = []

    def _make(**config: float) -> mail.Mailer:
        smtp = settings_mod.SmtpSettings(port=smtp_sink.port, timeout_seconds=5)
        mailer = mail.Mailer(smtp.model_copy(update=config))
        made.append(mailer)
        return mailer

    yield _make
    for mailer in made:
        await mailer.close()


def _email(n: int) -> EmailMessage:
    context = {
        "request_id": f"r{n}",
        "filename": f"f{n}.csv",
        "size": 1000,
        "expires_at": "2026-12-01T10:00:00+00:00",
        "download_url": "http://files.example.com/download/TOKEN",
    }
    return mail.render("ready", f"user{n}@example.com", "bgworker <b@localhost>", context)


def _ids(sink: SmtpSink) -> list[str]:
    return [str(message["Message-ID"]) for message in sink.messages]


async def test_emails_share_one_connection(smtp_sink: SmtpSink, make_mailer: MakeMailer) -> None:
    mailer = make_mailer()
    accepted: list[int] = []
    for n in range(5):

        async def on_accepted(n: int = n) -> None:
            # Runs once the server has the message, before the next send.
            accepted.append(len(smtp_sink.messages))

        await mailer.send(_email(n), on_accepted)
    assert accepted == [1, 2, 3, 4, 5]
    assert smtp_sink.connections == 1 and mailer.connections_made == 1
    assert smtp_sink.quits == 0 and smtp_sink.open_connections() == 1
    await mailer.close()
    await wait_until(lambda: smtp_sink.open_connections() == 0)
    assert smtp_sink.quits == 1


async def test_concurrent_sends_use_one_connection_each(
    smtp_sink: SmtpSink, make_mailer: MakeMailer
) -> None:
    mailer = make_mailer()
    await asyncio.gather(*(mailer.send(_email(n)) for n in range(3)))
    assert len(smtp_sink.messages) == 3
    made = mailer.connections_made
    assert 1 <= made <= 3  # never more than the sends running at once
    await asyncio.gather(*(mailer.send(_email(n)) for n in range(3, 6)))
    assert len(smtp_sink.messages) == 6
    # The second round finds the first round's connections idle: at most the shortfall is new.
    assert smtp_sink.connections == mailer.connections_made <= 3


async def test_idle_seconds_zero_is_a_connection_per_email(
    smtp_sink: SmtpSink, make_mailer: MakeMailer
) -> None:
    mailer = make_mailer(idle_seconds=0)
    for n in range(3):
        await mailer.send(_email(n))
    assert smtp_sink.connections == 3 and smtp_sink.quits == 3
    await wait_until(lambda: smtp_sink.open_connections() == 0)


async def test_connection_closed_after_max_messages(
    smtp_sink: SmtpSink, make_mailer: MakeMailer
) -> None:
    mailer = make_mailer(max_messages_per_connection=2)
    for n in range(5):
        await mailer.send(_email(n))
    assert len(smtp_sink.messages) == 5
    assert smtp_sink.connections == 3 and smtp_sink.quits == 2


async def test_idle_connection_is_closed(smtp_sink: SmtpSink, make_mailer: MakeMailer) -> None:
    mailer = make_mailer(idle_seconds=0.2)
    await mailer.send(_email(0))
    await wait_until(lambda: smtp_sink.quits == 1, timeout=10)
    await wait_until(lambda: smtp_sink.open_connections() == 0)
    await mailer.send(_email(1))  # a new connection after the idle close
    assert smtp_sink.connections == 2 and len(smtp_sink.messages) == 2


async def test_server_dropped_idle_connection_next_email_once(
    smtp_sink: SmtpSink, make_mailer: MakeMailer
) -> None:
    mailer = make_mailer()
    await mailer.send(_email(0))
    assert smtp_sink.drop_connections() == 1
    await mailer.send(_email(1))
    assert _ids(smtp_sink) == ["<r0.ready@bgworker>", "<r1.ready@bgworker>"]
    assert smtp_sink.connections == 2


async def test_stale_connection_refusing_mail_from_is_retried_once(
    smtp_sink: SmtpSink, make_mailer: MakeMailer
) -> None:
    # The failure a client sees when a server it has not yet heard from closed the session:
    # on MAIL FROM, before any message was handed over, so a fresh connection may send it.
    mailer = make_mailer()
    await mailer.send(_email(0))
    smtp_sink.faults["MAIL"] = "421 idle too long, closing"
    await mailer.send(_email(1))
    assert _ids(smtp_sink) == ["<r0.ready@bgworker>", "<r1.ready@bgworker>"]
    assert smtp_sink.connections == 2


async def test_first_use_failure_is_not_retried(
    smtp_sink: SmtpSink, make_mailer: MakeMailer
) -> None:
    # A fresh connection refusing the sender is the server's answer, not a stale connection.
    mailer = make_mailer()
    smtp_sink.faults["MAIL"] = "421 busy"
    with pytest.raises(mail.NotifyError, match="421"):
        await mailer.send(_email(0))
    assert smtp_sink.connections == 1 and smtp_sink.messages == []


@pytest.mark.parametrize("fault", [sink_mod.DROP, "451 local error"])
async def test_failure_during_data_is_reported_not_resent(
    smtp_sink: SmtpSink, make_mailer: MakeMailer, fault: str
) -> None:
    mailer = make_mailer()
    await mailer.send(_email(0))
    smtp_sink.faults["DATA"] = fault  # the sink keeps the message, the reply is lost/refused
    accepted: list[bool] = []

    async def on_accepted() -> None:
        accepted.append(True)

    with pytest.raises(mail.NotifyError):
        await mailer.send(_email(1), on_accepted)
    assert accepted == []
    assert _ids(smtp_sink) == ["<r0.ready@bgworker>", "<r1.ready@bgworker>"]  # no copy
    assert smtp_sink.connections == 1
    # The failed connection was discarded, never reused: the next email gets a new one.
    await mailer.send(_email(2))
    assert smtp_sink.connections == 2 and len(smtp_sink.messages) == 3


async def test_worker_stop_quits_its_connections(
    settings: settings_mod.Settings,
    smtp_sink: SmtpSink,
    publish: Publish,
    start_worker: StartWorker,
) -> None:
    settings.smtp.idle_seconds = 600  # only the stop can close them within the test
    w = await start_worker()
    for n in range(3):
        await publish("blob", {"size": 10, "seed": n}, requester={"email": f"u{n}@example.com"})
    await smtp_sink.wait_for(3, timeout=30)
    assert smtp_sink.open_connections() >= 1  # kept for the next email
    w.stop()
    await wait_until(lambda: smtp_sink.open_connections() == 0)
    assert smtp_sink.quits == smtp_sink.connections
    assert smtp_sink.connections <= 3


async def test_a_worker_that_fails_while_stopping_still_quits_its_connections(
    settings: settings_mod.Settings,
    smtp_sink: SmtpSink,
    publish: Publish,
    start_worker: StartWorker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The dispatcher's close never runs when the stop itself fails (a crash, simulated):
    the worker's exit stack still QUITs the pooled connections."""

    async def crash(*args: object) -> None:
        raise RuntimeError("simulated crash while stopping")

    settings.smtp.idle_seconds = 600  # only the stop can close them within the test
    w = await start_worker()
    await publish("blob", {"size": 10, "seed": 1}, requester={"email": "u1@example.com"})
    await smtp_sink.wait_for(1, timeout=30)
    assert smtp_sink.open_connections() == 1  # kept for the next email
    monkeypatch.setattr(worker.Worker, "_shutdown", crash)
    w.stop()
    await wait_until(lambda: smtp_sink.open_connections() == 0)
    assert smtp_sink.quits == smtp_sink.connections == 1
