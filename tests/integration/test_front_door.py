"""``POST /requests`` over a real socket, with real RabbitMQ, PostgreSQL, SMTP and worker:
accepted then ready, idempotent on the id, a conflicting body refused, bad bodies answered
with their field errors, keys checked, RabbitMQ away answered 503 and retried, and the
whole conformance corpus plus hypothesis' hostile bodies never answered 500."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from typing import Any, Final

import aio_pika
import aiohttp
import pytest
from hypothesis import Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from pydantic import SecretStr

from bgworker import settings as settings_mod
from bgworker import storage, store
from bgworker.cli.smtp_sink import SmtpSink, text_body
from bgworker.messaging import topology
from bgworker.ops import cleanup
from bgworker.web import front_door
from tests.helpers import (
    EventLog,
    StartServer,
    StartWorker,
    event_body,
    must_match,
    wait_for_status,
    wait_until,
    work_queue_depth,
)
from tests.integration.downloads import fetch
from tests.unit.test_contract import CASES, CORPUS, body_of

KEY: Final = "k-" + "a" * 30
OLD_KEY: Final = "k-" + "b" * 30
JSON: Final = {"Content-Type": "application/json"}

pytestmark = pytest.mark.usefixtures("amqp")  # the test's topology is deleted after it


@pytest.fixture
def front_settings(settings: settings_mod.Settings) -> settings_mod.Settings:
    settings.web.api_keys = [SecretStr(OLD_KEY), SecretStr(KEY)]
    return settings


async def post(
    base: str, body: bytes | dict[str, Any], *, key: str | None = KEY, **headers: str
) -> tuple[int, dict[str, str], dict[str, Any]]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    sent = {**JSON, **headers}
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    # A large body as a stream: aiohttp warns about sending big bytes objects at once.
    data = io.BytesIO(raw) if len(raw) > 64 * 1024 else raw
    status, hdrs, content = await fetch("POST", f"{base}/requests", data=data, headers=sent)
    assert hdrs["Content-Type"].startswith("application/json"), (status, content[:200])
    return status, dict(hdrs), json.loads(content)


async def start_server_without_rabbitmq(
    settings: settings_mod.Settings, start_server: StartServer
) -> str:
    """A server whose AMQP URL points where nothing listens (RabbitMQ away); the settings
    are restored for the servers started after it (the same database)."""
    good_url = settings.amqp_url
    settings.amqp_url = SecretStr("amqp://guest:guest@127.0.0.1:1/")
    try:
        return await start_server()
    finally:
        settings.amqp_url = good_url


def rebase(url: str, base: str) -> str:
    return base + "/status/" + must_match(r"/status/(\S+)$", url)[1]


async def test_accepted_then_ready_with_the_handlers_names_and_one_email(
    front_settings: settings_mod.Settings,
    db: store.Store,
    smtp_sink: SmtpSink,
    start_worker: StartWorker,
    start_server: StartServer,
    event_log: EventLog,
) -> None:
    base = await start_server()
    await start_worker()
    request_id = uuid.uuid4()
    body = {
        "id": str(request_id),
        "file_type": "login_events",
        "criteria": {"rows": 5},
        "requester": {"id": "42", "email": "ann@example.com"},
    }
    status, hdrs, answer = await post(base, body)
    assert status == 202, answer
    assert answer["id"] == body["id"] and answer["status"] == "queued"
    assert hdrs["Location"] == answer["status_url"]
    row = await wait_for_status(db, request_id, "ready")
    # Recorded by the worker, as for any producer: the handler's extension and type.
    assert (row.filename, row.content_type) == ("login_events.csv", "text/csv; charset=utf-8")
    code, _, page = await fetch("GET", rebase(answer["status_url"], base))
    assert code == 200 and json.loads(page)["status"] == "ready"
    [email] = await smtp_sink.wait_for(1, timeout=30)
    assert email["To"] == "ann@example.com" and "/download/" in text_body(email)
    await wait_until(lambda: any(k == topology.READY_KEY for k, _ in event_log))


async def test_the_same_id_twice_is_published_once_and_builds_one_file(
    front_settings: settings_mod.Settings,
    amqp: aio_pika.abc.AbstractChannel,
    db: store.Store,
    start_worker: StartWorker,
    start_server: StartServer,
    event_log: EventLog,
) -> None:
    base = await start_server()
    body = event_body()  # no requested_at: each POST's default differs, and must not matter
    first = await post(base, body)
    second = await post(base, body)
    assert first[0] == second[0] == 202
    assert first[2]["id"] == second[2]["id"] == body["id"]
    assert await work_queue_depth(amqp, front_settings.namespace) == 1  # one message, not two
    await start_worker()
    row = await wait_for_status(db, uuid.UUID(body["id"]), "ready")
    status, _, answer = await post(base, body)  # after the worker: the row answers
    assert (status, answer["status"]) == (202, "ready")
    assert await work_queue_depth(amqp, front_settings.namespace) == 0
    assert row.attempts == 1
    await wait_until(lambda: event_log)
    assert [k for k, _ in event_log] == [topology.READY_KEY]


async def test_a_different_body_under_a_known_id_is_409_naming_the_fields(
    front_settings: settings_mod.Settings,
    amqp: aio_pika.abc.AbstractChannel,
    db: store.Store,
    start_worker: StartWorker,
    start_server: StartServer,
) -> None:
    base = await start_server()
    body = event_body()
    assert (await post(base, body))[0] == 202
    changed = {**body, "criteria": {"size": 7}, "filename": "other.bin"}
    status, _, answer = await post(base, changed)  # before any worker: the door's record
    assert status == 409, answer
    assert answer["reason"] == "conflicting_duplicate"
    assert answer["fields"] == ["criteria", "filename"]
    assert await work_queue_depth(amqp, front_settings.namespace) == 1
    await start_worker()
    row = await wait_for_status(db, uuid.UUID(body["id"]), "ready")
    assert row.event["criteria"] == {"size": 100}  # the first body, unchanged
    status, _, answer = await post(base, changed)  # after: the request row
    assert status == 409 and answer["fields"] == ["criteria", "filename"]
    assert "(ready)" in answer["error"]


async def test_concurrent_posts_of_one_id_publish_one_body(
    front_settings: settings_mod.Settings,
    amqp: aio_pika.abc.AbstractChannel,
    start_server: StartServer,
) -> None:
    """The door's insert decides: of racing POSTs of one id, the same body is published once,
    and of different bodies exactly one is accepted."""
    base = await start_server()
    same = event_body()
    answers = await asyncio.gather(*(post(base, same) for _ in range(8)))
    assert [status for status, _, _ in answers] == [202] * 8
    assert await work_queue_depth(amqp, front_settings.namespace) == 1
    request_id = str(uuid.uuid4())
    bodies = [event_body(id=request_id, criteria={"size": n}) for n in range(8)]
    answers = await asyncio.gather(*(post(base, body) for body in bodies))
    assert sorted(status for status, _, _ in answers) == [202] + [409] * 7
    assert await work_queue_depth(amqp, front_settings.namespace) == 2


@pytest.mark.parametrize(
    ("body", "expected", "location"),
    [
        (event_body(filename="../etc/passwd"), 422, "filename"),
        (event_body(lifetime_seconds=True), 422, "lifetime_seconds"),
        (event_body(requester={"email": "Ann <ann@example.com>"}), 422, "requester.email"),
        (event_body(unknown=1), 422, "unknown"),
        (event_body(schema_version=2), 422, "schema_version"),
        (event_body(criteria={"n": 1e999}), 422, "criteria.n"),
        (b'{"id": "x", "id": "y"}', 400, "body"),
        (b"\xff\xfe not utf-8", 400, "body"),
        (b"[1, 2]", 422, "body"),
    ],
)
async def test_a_bad_body_gets_its_field_errors(
    front_settings: settings_mod.Settings,
    amqp: aio_pika.abc.AbstractChannel,
    start_server: StartServer,
    body: bytes | dict[str, Any],
    expected: int,
    location: str,
) -> None:
    base = await start_server()
    status, _, answer = await post(base, body)
    assert status == expected, answer
    assert location in [e["location"] for e in answer["errors"]], answer
    assert all(set(e) == {"location", "message"} and e["message"] for e in answer["errors"])
    assert await work_queue_depth(amqp, front_settings.namespace) == 0


async def test_several_errors_are_listed_one_by_one(
    front_settings: settings_mod.Settings, start_server: StartServer
) -> None:
    base = await start_server()
    status, _, answer = await post(base, event_body(filename="", file_type="Bad Type"))
    assert status == 422
    assert {e["location"] for e in answer["errors"]} == {"filename", "file_type"}


async def test_keys_content_type_and_size(
    front_settings: settings_mod.Settings, start_server: StartServer
) -> None:
    base = await start_server()
    status, hdrs, _ = await post(base, event_body(), key=None)
    assert status == 401 and hdrs["WWW-Authenticate"] == 'Bearer realm="bgworker"'
    status, hdrs, _ = await post(base, event_body(), key=KEY[:-1] + "x")
    assert status == 401 and 'error="invalid_token"' in hdrs["WWW-Authenticate"]
    status, _, _ = await post(base, event_body(), key=None, Authorization=f"Basic {KEY}")
    assert status == 401
    assert (await post(base, event_body(), key=OLD_KEY))[0] == 202  # both keys (rotation)
    status, _, _ = await post(base, event_body(), **{"Content-Type": "text/plain"})
    assert status == 415
    status, _, _ = await post(
        base, event_body(), **{"Content-Type": "application/json; charset=latin-1"}
    )
    assert status == 415
    huge = json.dumps(event_body(description="x" * (1024 * 1024))).encode()
    status, _, _ = await post(base, huge)
    assert status == 413
    # Refused before the body is read: no key, no reading.
    status, _, _ = await post(base, huge, key=None)
    assert status == 401


@pytest.mark.parametrize(
    ("authorization", "expected"),
    [
        (f"bearer {KEY}", 202),  # the scheme is case-insensitive (RFC 9110 section 11.1)
        (f"Bearer   {KEY}  ", 202),
        ("Bearer", 401),
        ("Bearer ", 401),
        (f"Bearer {KEY} {KEY}", 401),
        (f"Bearer {KEY[:-1]}", 401),  # a prefix of a key
        (f"Bearer {KEY}\u00e9", 401),
        (f"Token {KEY}", 401),
    ],
)
async def test_authorization_headers(
    front_settings: settings_mod.Settings,
    start_server: StartServer,
    authorization: str,
    expected: int,
) -> None:
    base = await start_server()
    headers = {"Authorization": authorization}
    status, _, answer = await post(base, event_body(), key=None, **headers)
    assert status == expected, answer


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("application/json; charset=utf-8", 202),
        ('application/json; charset="UTF-8"', 202),
        ("Application/JSON", 202),
        ("application/json; charset=utf-16", 415),
        ("text/json", 415),
        ("application/x-www-form-urlencoded", 415),
        ("", 415),
    ],
)
async def test_content_types(
    front_settings: settings_mod.Settings,
    start_server: StartServer,
    content_type: str,
    expected: int,
) -> None:
    base = await start_server()
    status, _, answer = await post(base, event_body(), **{"Content-Type": content_type})
    assert status == expected, answer


async def test_without_api_keys_there_is_no_front_door(
    settings: settings_mod.Settings, start_server: StartServer
) -> None:
    assert not settings.web.api_keys
    base = await start_server()
    status, _, _ = await fetch("POST", f"{base}/requests", data=b"{}", headers=JSON)
    assert status in (404, 405)


async def test_rabbitmq_away_is_503_and_the_same_body_is_published_on_retry(
    front_settings: settings_mod.Settings,
    amqp: aio_pika.abc.AbstractChannel,
    db: store.Store,
    start_server: StartServer,
) -> None:
    away = await start_server_without_rabbitmq(front_settings, start_server)
    body = event_body()
    status, hdrs, answer = await post(away, body)
    assert status == 503, answer
    assert hdrs["Retry-After"] == "5"
    back = await start_server()  # the same database: the body was kept, unpublished
    assert await work_queue_depth(amqp, front_settings.namespace) == 0
    status, _, answer = await post(back, body)
    assert status == 202, answer
    assert await work_queue_depth(amqp, front_settings.namespace) == 1


async def test_clean_drops_the_records_no_post_needs(
    front_settings: settings_mod.Settings,
    amqp: aio_pika.abc.AbstractChannel,
    db: store.Store,
    start_worker: StartWorker,
    start_server: StartServer,
) -> None:
    """Once a worker recorded the request its row answers, so `bgworker clean` drops the
    door's record; a repeat is still one file. An unpublished record (its POST answered
    503, never retried) older than --orphan-age frees its id."""
    away = await start_server_without_rabbitmq(front_settings, start_server)
    abandoned = event_body()
    assert (await post(away, abandoned))[0] == 503
    base = await start_server()
    body = event_body()
    assert (await post(base, body))[0] == 202
    files = storage.LocalStorage(front_settings.storage_dir)
    # Before any worker: the published record is still needed, the abandoned one is young.
    assert (await cleanup.clean(db, files)).front_door == 0
    await start_worker()
    await wait_for_status(db, uuid.UUID(body["id"]), "ready")
    dry = await cleanup.clean(db, files, orphan_age_seconds=0, dry_run=True)
    assert dry.front_door == 2
    assert (await cleanup.clean(db, files, orphan_age_seconds=0)).front_door == 2
    assert (await cleanup.clean(db, files, orphan_age_seconds=0)).front_door == 0
    status, _, answer = await post(base, body)  # the request row answers now
    assert (status, answer["status"]) == (202, "ready")
    changed = {**body, "criteria": {"size": 1}}
    assert (await post(base, changed))[0] == 409
    assert await work_queue_depth(amqp, front_settings.namespace) == 0
    # The abandoned id is free: another body under it is accepted.
    assert (await post(base, {**abandoned, "criteria": {"size": 2}}))[0] == 202


# -- Hostile bodies: the conformance corpus and hypothesis ---------------------------------

BASE_ID: Final = CORPUS["base"]["id"].encode()


def _hostile_sample(n: int) -> list[bytes]:
    """n varied hostile bodies, the same every run (hypothesis drives the generation)."""
    text = st.text(st.characters(exclude_categories=()), max_size=10)
    leaf = st.none() | st.booleans() | st.integers() | st.floats() | text
    json_doc = st.recursive(
        leaf,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
        max_leaves=8,
    )
    looking = st.fixed_dictionaries(
        {"id": st.uuids().map(str) | text, "file_type": st.just("blob") | text},
        optional={"criteria": json_doc, "filename": text, "requester": json_doc},
    )
    doc = st.one_of(
        st.binary(max_size=64),
        json_doc.map(lambda v: json.dumps(v).encode()),
        looking.map(lambda v: json.dumps(v).encode()),
    )
    out: list[bytes] = []

    @hypothesis_settings(
        max_examples=5 * n, database=None, derandomize=True, phases=[Phase.generate]
    )
    @given(doc)
    def collect(body: bytes) -> None:
        out.append(body)

    collect()
    return out[-n:]  # the later examples are the less trivial ones


# Once: the next INSERT into the door's table finds its id's record gone, as when
# `bgworker clean` drops it between the POST's INSERT ... ON CONFLICT and its SELECT.
DROP_ONCE: Final = """
CREATE TABLE drop_once (id uuid PRIMARY KEY);
CREATE FUNCTION drop_once() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE hit uuid;
BEGIN
    DELETE FROM drop_once WHERE id = NEW.id RETURNING id INTO hit;
    IF hit IS NOT NULL THEN
        DELETE FROM bgworker_front_door WHERE id = NEW.id;
        RETURN NULL;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER drop_once BEFORE INSERT ON bgworker_front_door
    FOR EACH ROW EXECUTE FUNCTION drop_once();
"""


async def test_a_record_clean_drops_under_a_post_is_decided_again(
    front_settings: settings_mod.Settings,
    amqp: aio_pika.abc.AbstractChannel,
    db: store.Store,
    start_server: StartServer,
) -> None:
    """`bgworker clean` may drop a door record between a repeated POST's two statements: the
    POST decides again (never a 500), and the body stays published."""
    base = await start_server()
    body = event_body()
    assert (await post(base, body))[0] == 202
    await db.pool.execute(DROP_ONCE)
    await db.pool.execute("INSERT INTO drop_once VALUES ($1)", uuid.UUID(body["id"]))
    status, _, answer = await post(base, body)
    assert (status, answer["id"]) == (202, body["id"])
    assert await db.pool.fetchval("SELECT count(*) FROM drop_once") == 0  # it did drop it
    # Published again (the worker takes the copy as a duplicate): never lost.
    assert await work_queue_depth(amqp, front_settings.namespace) == 2


async def test_no_body_is_answered_500(
    front_settings: settings_mod.Settings, start_server: StartServer
) -> None:
    """The whole conformance corpus (each case under a fresh id) and hostile bodies:
    accepted cases 202, rejected ones 400/422 with errors, and never a 500."""
    base = await start_server()
    async with aiohttp.ClientSession() as session:

        async def send(raw: bytes) -> tuple[int, dict[str, Any]]:
            headers = {**JSON, "Authorization": f"Bearer {KEY}"}
            data = io.BytesIO(raw) if len(raw) > 64 * 1024 else raw
            async with session.post(f"{base}/requests", data=data, headers=headers) as r:
                return r.status, json.loads(await r.read())

        for case in CASES:
            raw = body_of(case).replace(BASE_ID, str(uuid.uuid4()).encode())
            status, answer = await send(raw)
            if case["expect"] == "accept":
                assert status == 202, (case["name"], answer)
            elif len(raw) > front_door.MAX_BODY_BYTES:
                assert status == 413, (case["name"], status, answer)
            else:
                expected = 400 if case["expect"] == "malformed_json" else 422
                assert status == expected, (case["name"], status, answer)
                assert answer["reason"] == case["expect"] and answer["errors"], case["name"]
        for raw in _hostile_sample(60):
            status, answer = await send(raw)
            assert status in (202, 400, 409, 422), (raw[:200], status, answer)
