"""Letters no producer should send, in the real `{ns}.dead` queue: the CLI and the console
list, count, show and purge every one of them, and what they print is valid UTF-8 / JSON."""

from __future__ import annotations

import functools
import json
import re
import struct
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import aio_pika
import pamqp.encode
import pytest

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.messaging import amqp_frames, broker
from bgworker.ops.deadletters import letters, queue, reading
from tests.helpers import REPO, dead_queue_of
from tests.integration.console import CSRF_RE, basic, client, log_in
from tests.integration.letters import Cli, depth, drain, wait_depth

pytestmark = pytest.mark.usefixtures("fixable_handler")

PASSWORD_AUTH = basic("admin", "correct horse battery")


class RawLongString(bytes):
    """A long-string header sent byte for byte: other clients may send invalid UTF-8."""


@dataclass(frozen=True)
class Hostile:
    name: str
    body: bytes
    headers: dict[str, Any]
    message_id: str = "not-a-uuid"  # aiormq would give a letter without one a random uuid


def our_headers(reason: str = "malformed_json", **extra: Any) -> dict[str, Any]:
    return {
        "x-bgworker-reason": reason,
        "x-bgworker-error-class": "InvalidEventError",
        "x-bgworker-error": f"{reason}: the worker could not use it",
        "x-bgworker-attempts": 0,
        "x-bgworker-failed-at": datetime.now(UTC).isoformat(),
        **extra,
    }


def hostile_letters() -> list[Hostile]:
    some_id = str(uuid.uuid4())
    return [
        Hostile("not JSON", b"{not json", our_headers()),
        Hostile("not UTF-8", b"caf\xe9 \xff\xfe not utf-8", our_headers()),
        Hostile("deep", b"[" * 100_000 + b"]" * 100_000, our_headers()),
        Hostile(
            "surrogate",
            b'{"id": "%s", "file_type": "\\ud800", "criteria": {"s": "\\udc00x"}}'
            % some_id.encode(),
            our_headers("invalid_schema"),
            message_id=some_id,
        ),
        Hostile("NaN", b'{"file_type": "login_events", "criteria": {"x": NaN}}', our_headers()),
        Hostile("bare NaN", b"NaN", our_headers()),
        Hostile("5000 digits", b'{"criteria": {"n": ' + b"7" * 5000 + b"}}", our_headers()),
        Hostile("empty", b"", our_headers()),
        Hostile("huge", b'{"pad": "' + b"x" * (6 * 1024 * 1024) + b'"}', our_headers()),
        Hostile(
            "odd headers",
            b"{}",
            {
                "x-death": "not a list",
                "x-bgworker-reason": bytearray(b"bytes\xffreason"),
                "x-bgworker-error-class": RawLongString(b"Caf\xe9Error"),
                "x-bgworker-error": "\x1b[2J\r\nclears your screen\x00",
                "x-bgworker-attempts": "three",
                "x-bgworker-failed-at": "9999-12-31T23:00:00-05:00",
                "x-nested": {"a": [1, {"b": [Decimal("1.5"), bytearray(b"\x00\xff"), None]}]},
            },
        ),
        Hostile(
            "x-death of odd entries",
            b"[1, 2]",
            {"x-death": [1, "two", {"reason": RawLongString(b"\xfe"), "time": "yesterday"}]},
        ),
    ]


@pytest.fixture
def raw_long_strings(monkeypatch: pytest.MonkeyPatch) -> None:
    real = pamqp.encode.encode_table_value

    def encode(value: Any) -> bytes:
        if isinstance(value, RawLongString):
            return b"S" + struct.pack(">I", len(value)) + bytes(value)
        return real(value)

    monkeypatch.setattr(pamqp.encode, "encode_table_value", encode)


@pytest.fixture
async def hostile(
    settings: settings_mod.Settings,
    dead_queue: queue.DeadLetterQueue,
    raw_long_strings: None,
    amqp: aio_pika.abc.AbstractChannel,
) -> dict[str, str]:
    """Every hostile letter, straight into the test namespace's dead-letter queue; returns
    name -> key as the tools name it."""
    channel = await broker.open_channel(dead_queue.connection)  # type: ignore[arg-type]
    letters = hostile_letters()
    for letter in letters:
        message = aio_pika.Message(
            letter.body, headers=letter.headers, message_id=letter.message_id
        )
        await broker.publish(channel, dead_queue.topology.dead_exchange, "", message)
    await channel.close()
    read = [letter async for letter in reading.matching(dead_queue)]
    assert len(read) == len(letters)
    return {h.name: r.key for h, r in zip(letters, read, strict=True)}


def strict_json(text: str) -> Any:
    def refuse(constant: str) -> Any:
        raise AssertionError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def assert_clean(text: str) -> None:
    """What a terminal or a browser receives: valid UTF-8 (decoding already proved it),
    no lone surrogate, no escape sequence or NUL."""
    text.encode("utf-8")
    assert not re.search("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", text), repr(text[:200])


async def test_cli_lists_shows_counts_and_purges_any_letter(
    settings: settings_mod.Settings,
    db: store.Store,
    amqp: aio_pika.abc.AbstractChannel,
    hostile: dict[str, str],
    cli: Cli,
) -> None:
    n = len(hostile)
    keys = set(hostile.values())
    assert len(keys) == n  # every letter has its own stable key
    assert hostile["not JSON"].startswith("msg-") and hostile["deep"].startswith("msg-")

    code, out, err = await cli("dlq", "list")
    assert code == 0, err
    assert_clean(out)
    assert all(key in out for key in keys) and f"{n} dead letter(s)" in err
    assert "Caf\ufffdError" in out and "clears your screen" in out

    code, out, err = await cli("dlq", "list", "--json")
    assert code == 0, err
    listed = {row["key"]: row for row in strict_json(out)}
    assert set(listed) == keys
    assert "nested too deeply" in listed[hostile["deep"]]["body_error"]
    assert "not UTF-8" in listed[hostile["not UTF-8"]]["body_error"]
    assert "4300 digits" in listed[hostile["5000 digits"]]["body_error"]
    assert any("replaced" in note for note in listed[hostile["odd headers"]]["notes"])

    for args in (("dlq", "stats"), ("dlq", "stats", "--json")):
        code, out, err = await cli(*args)
        assert code == 0, err
        assert_clean(out)
    assert strict_json(out)["total"] == n

    for name, key in hostile.items():
        code, out, err = await cli("dlq", "show", key)
        assert code == 0, (name, err)
        assert_clean(out)
        shown = strict_json(out)
        assert shown["key"] == key, name
    surrogate = strict_json((await cli("dlq", "show", hostile["surrogate"]))[1])
    assert surrogate["payload"]["file_type"] == "\ufffd"
    assert surrogate["payload"]["criteria"] == {"s": "\ufffdx"}
    assert "payload: lone UTF-16 surrogates replaced with U+FFFD" in surrogate["notes"]
    nan = strict_json((await cli("dlq", "show", hostile["NaN"]))[1])
    assert nan["payload"]["criteria"] == {"x": "nan"}
    huge = strict_json((await cli("dlq", "show", hostile["huge"]))[1])
    assert huge["size"] > 6 * 1024 * 1024 and len(huge["body"]) == letters.SHOW_BYTES
    assert await depth(amqp, dead_queue_of(settings)) == n  # reads changed nothing

    # Replay survives them too: each is kept as invalid, or (valid JSON with no id) replayed.
    code, out, err = await cli("dlq", "replay", "--all", "--dry-run", "--json")
    assert code == 0, err
    assert {o["result"] for o in strict_json(out)["outcomes"]} <= {"kept", "would-replay"}

    code, out, err = await cli("dlq", "purge", hostile["deep"], "--yes")
    assert code == 0, err
    assert "purged 1" in out
    code, out, err = await cli("dlq", "purge", "--all", "--yes")
    assert code == 0, err
    assert f"purged {n - 1}" in out
    assert await depth(amqp, dead_queue_of(settings)) == 0
    actions = await db.pool.fetch("SELECT letter_key, action FROM bgworker_dlq_actions")
    assert {(a["letter_key"], a["action"]) for a in actions} == {(k, "purge") for k in keys}


async def test_console_lists_shows_and_purges_any_letter(
    settings: settings_mod.Settings,
    db: store.Store,
    amqp: aio_pika.abc.AbstractChannel,
    hostile: dict[str, str],
    console: str,
) -> None:
    n = len(hostile)
    async with client() as http:
        async with http.get(f"{console}/admin/dead-letters", headers=PASSWORD_AUTH) as r:
            assert r.status == 200
            page = (await r.read()).decode("utf-8")
        assert_clean(page)
        assert all(key in page for key in hostile.values())
        assert "body not parsed" in page and "shown with replacements" in page
        for path in ("/admin/api/dead-letters", "/admin/api/dead-letters/stats"):
            async with http.get(console + path, headers=PASSWORD_AUTH) as r:
                assert r.status == 200
                body = strict_json((await r.read()).decode("utf-8"))
        assert body["total"] == n
        for name, key in hostile.items():
            async with http.get(f"{console}/admin/dead-letters/{key}", headers=PASSWORD_AUTH) as r:
                assert r.status == 200, name
                page = (await r.read()).decode("utf-8")
            assert_clean(page)
            assert key in page
            async with http.get(
                f"{console}/admin/api/dead-letters/{key}", headers=PASSWORD_AUTH
            ) as r:
                assert r.status == 200, name
                assert strict_json((await r.read()).decode("utf-8"))["key"] == key
        async with http.get(
            f"{console}/admin/dead-letters/{hostile['surrogate']}", headers=PASSWORD_AUTH
        ) as r:
            page = await r.text()
        assert "Shown with replacements" in page and "lone UTF-16 surrogates" in page
        assert await depth(amqp, dead_queue_of(settings)) == n

        # Purge one by its key from its page, then all the rest as a selection.
        token = await log_in(http, console)
        one = {"csrf": token, "action": f"purge:one:{hostile['odd headers']}", "confirm": "yes"}
        async with http.post(f"{console}/admin/dead-letters/action", data=one) as r:
            assert r.status == 200
            assert "<b>purged</b> 1" in await r.text()
        rest = [k for name, k in hostile.items() if name != "odd headers"]
        form = [("csrf", token), ("action", "purge:selected"), *(("id", k) for k in rest)]
        async with http.post(f"{console}/admin/dead-letters/action", data=form) as r:
            page = await r.text()
            assert r.status == 200 and f"Purge {n - 1} dead letter(s)?" in page
            assert CSRF_RE.search(page) is not None
        async with http.post(
            f"{console}/admin/dead-letters/action", data=[*form, ("confirm", "yes")]
        ) as r:
            assert r.status == 200
            assert f"<b>purged</b> {n - 1}" in await r.text()
    assert await depth(amqp, dead_queue_of(settings)) == 0


class RawTimestamp(int):
    """A timestamp header of any 64-bit value: pamqp decodes it with
    ``datetime.fromtimestamp``, which refuses years past 9999."""


# A short string property with this value is sent as two bytes that are not UTF-8
# (aio-pika turns str subclasses into str, so a marker value it is).
NOT_UTF8_SHORT_STRING = "send-as-invalid-utf8"


@pytest.fixture
def undecodable_encoders(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    real_value = pamqp.encode.encode_table_value
    real_short = pamqp.encode.METHODS["shortstr"]

    def encode_value(value: Any) -> bytes:
        if isinstance(value, RawTimestamp):
            return b"T" + struct.pack(">Q", int(value))
        return real_value(value)

    def encode_short(value: str) -> bytes:
        if value == NOT_UTF8_SHORT_STRING:
            return b"\x02\xff\xfe"
        return real_short(value)

    monkeypatch.setattr(pamqp.encode, "encode_table_value", encode_value)
    monkeypatch.setitem(pamqp.encode.METHODS, "shortstr", encode_short)
    # bgworker reads these two leniently (bgworker.messaging.amqp_frames); with pamqp's strict
    # decoders back they stand for a frame that no decoder can read.
    amqp_frames.uninstall()
    yield
    amqp_frames.install()


async def test_letters_pamqp_refuses_are_read_leniently(
    settings: settings_mod.Settings,
    db: store.Store,
    amqp: aio_pika.abc.AbstractChannel,
    dead_queue: queue.DeadLetterQueue,
    undecodable_encoders: None,
    cli: Cli,
) -> None:
    """A timestamp header past 9999 and a short string that is not UTF-8: pamqp alone
    refuses the frame, bgworker (amqp_frames, installed in every bgworker process) reads
    it, so the letters are listed and purged like any other."""
    amqp_frames.install()  # this process too (the fixture removed it)
    channel = await broker.open_channel(dead_queue.connection)  # type: ignore[arg-type]
    for message in [
        aio_pika.Message(b"t", headers={"x-bgworker-failed-at": RawTimestamp(2**63 - 1)}),
        aio_pika.Message(b"s", correlation_id=NOT_UTF8_SHORT_STRING, message_id="s"),
    ]:
        await broker.publish(channel, dead_queue.topology.dead_exchange, "", message)
    await channel.close()
    code, out, err = await cli("dlq", "list", "--json")
    assert code == 0, err
    assert sorted(row["size"] for row in strict_json(out)) == [1, 1]
    code, out, err = await cli("dlq", "purge", "--all", "--yes")
    assert code == 0 and "purged 2" in out, err
    assert await depth(amqp, dead_queue_of(settings)) == 0


async def test_letters_the_client_cannot_decode_are_named_and_purged(
    settings: settings_mod.Settings,
    db: store.Store,
    amqp: aio_pika.abc.AbstractChannel,
    dead_queue: queue.DeadLetterQueue,
    undecodable_encoders: None,
    cli: Cli,
    console: str,
    tmp_path: Path,
) -> None:
    """A frame no decoder can read (simulated: pamqp's strict decoders, in this process and,
    through a sitecustomize, in the CLI's): aiormq drops the connection, the tools say which
    letter it is (no traceback) and `purge --undecodable` removes it by position, leaving
    the others in place and in order."""
    strict = tmp_path / "strict"
    strict.mkdir()
    (strict / "sitecustomize.py").write_text(
        "from bgworker.messaging import amqp_frames\n"
        "amqp_frames.uninstall()\n"
        "amqp_frames.install = lambda: None\n"
    )
    cli = functools.partial(cli, PYTHONPATH=f"{strict}:{REPO}")
    channel = await broker.open_channel(dead_queue.connection)  # type: ignore[arg-type]
    letters = [
        aio_pika.Message(b'"first"', message_id="first"),
        aio_pika.Message(b"t", headers={"x-bgworker-failed-at": RawTimestamp(2**63 - 1)}),
        aio_pika.Message(b'"middle"', message_id="middle"),
        aio_pika.Message(b"s", correlation_id=NOT_UTF8_SHORT_STRING, message_id="s"),
        aio_pika.Message(b'"last"', message_id="last"),
    ]
    for message in letters:
        await broker.publish(channel, dead_queue.topology.dead_exchange, "", message)
    await channel.close()
    dead = dead_queue_of(settings)

    code, out, err = await cli("dlq", "list", "--json")
    assert code == 1 and "Traceback" not in err
    assert "letter #2 in" in err and "cannot be decoded" in err and "--undecodable" in err
    assert len(strict_json(out)) == 1  # what could be read, as valid JSON
    async with client() as http:
        async with http.get(f"{console}/admin/api/dead-letters", headers=PASSWORD_AUTH) as r:
            assert r.status == 503 and "cannot be decoded" in strict_json(await r.text())["error"]
    # Every letter is still there once the console's channel has handed back what it held
    # (asynchronously, after the 503).
    await wait_depth(amqp, dead, 5)

    code, out, err = await cli("dlq", "purge", "--undecodable", "--dry-run")
    assert code == 0 and "would-purge 1" in out
    await wait_depth(amqp, dead, 5)
    code, out, err = await cli("dlq", "purge", "--undecodable", "--yes")
    assert code == 0, err
    assert "purged 1" in out
    code, _, err = await cli("dlq", "stats")
    assert code == 1 and "letter #3 in" in err  # the next one
    code, out, err = await cli("dlq", "purge", "--undecodable")  # no terminal: refused
    assert code == 64 and "pass --yes" in err and "Traceback" not in err
    code, out, err = await cli("dlq", "purge", "--undecodable", terminal="y\n")
    assert code == 0 and "purged 1" in out, err
    code, out, err = await cli("dlq", "purge", "--undecodable", "--yes")
    assert code == 0 and "nothing to do" in out

    code, out, err = await cli("dlq", "list", "--json")
    assert code == 0, err
    assert [row["size"] for row in strict_json(out)] == [7, 8, 6]
    left = await drain(amqp, dead)  # the readable ones, still in their order
    assert [m.body for m in left] == [b'"first"', b'"middle"', b'"last"']
    actions = await db.pool.fetch("SELECT letter_key, reason FROM bgworker_dlq_actions")
    assert sorted((a["letter_key"], a["reason"]) for a in actions) == [
        ("undecodable#2", "undecodable"),
        ("undecodable#3", "undecodable"),
    ]
