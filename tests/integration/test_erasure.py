"""Erasure (issue 24, part 4): ``bgworker forget --requester EMAIL`` and ``POST /erasures``
on real PostgreSQL, RabbitMQ, SMTP and storage (local and S3). Nothing of the person is left
in any text column of any table, in storage or in the dead-letter queue; another
requester's data is untouched; a delivery of an erased request still queued is never
built; the audit row names no one."""

from __future__ import annotations

import json
import uuid
from typing import Any, Final

import aio_pika
import pytest
from hypothesis import Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from pydantic import SecretStr

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.contract import event_fields, events
from bgworker.messaging import topology
from bgworker.ops import erasure
from tests.helpers import (
    AMQP_URL,
    Publish,
    PublishRaw,
    StartServer,
    StartWorker,
    insert_request,
    raw,
    stored_bytes,
    stored_keys,
    wait_for_status,
    wait_until,
)
from tests.integration.downloads import fetch
from tests.integration.letters import Cli

ANN: Final = "Ann.Lee@Example.com"
BOB: Final = "bob@example.com"
KEY: Final = "k-" + "e" * 30

pytestmark = pytest.mark.usefixtures("amqp")


async def tables_naming(db: store.Store, address: str) -> list[str]:
    """Every (table.column) of the public schema whose text holds ``address``, any case:
    every text, varchar and jsonb column of every table, read as text."""
    columns = await db.pool.fetch(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = 'public' AND data_type IN "
        "('text', 'character varying', 'jsonb', 'json')"
    )
    assert len(columns) > 20  # the whole schema, not a table or two
    found = []
    for c in columns:
        table, column = c["table_name"], c["column_name"]
        hits = await db.pool.fetchval(
            f'SELECT count(*) FROM "{table}" WHERE strpos(lower("{column}"::text), $1) > 0',
            address.lower(),
        )
        if hits:
            found.append(f"{table}.{column}")
    return found


async def letters(namespace: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """The dead letters, read and put back (the channel closes unacknowledged)."""
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        queue = await channel.get_queue(topology.Topology(namespace).dead_queue, ensure=False)
        out = []
        while (message := await queue.get(no_ack=False, fail=False)) is not None:
            out.append(message)
        return out
    finally:
        await connection.close()


async def people(
    db: store.Store, publish: Publish, publish_raw: PublishRaw, namespace: str
) -> dict[str, list[uuid.UUID]]:
    """Ann and Bob each with a ready request (file, email), a failed one (dead letter);
    Ann also with an invalid event (recorded failed, dead-lettered, her address only in
    its raw body) and one accepted by the front door that no worker has recorded yet."""
    made: dict[str, list[uuid.UUID]] = {}
    for who in (ANN, BOB):
        requester = {"email": who, "id": f"user-{who[:3]}"}
        ready = await publish("blob", {"size": 5000, "seed": len(who)}, requester=requester)
        failed = await publish("permanent", {"note": "x"}, requester=requester)
        made[who] = [ready.id, failed.id]
    invalid = str(uuid.uuid4())
    await publish_raw(
        raw({"id": invalid, "file_type": "blob", "requester": {"email": ANN}, "x": 1})
    )
    made[ANN].append(uuid.UUID(invalid))
    pending = events.FileRequested(id=uuid.uuid4(), file_type="blob", requester={"email": ANN})
    await db.front_door.reserve(pending.id, pending.model_dump(mode="json"))
    made["pending"] = [pending.id]
    for request_id in made[ANN][:2] + made[BOB]:
        await wait_for_status(db, request_id, {"ready", "failed"})
    await wait_for_status(db, made[ANN][2], "failed")
    await wait_until(lambda: _letters_of(namespace, 3))
    return made


async def _letters_of(namespace: str, n: int) -> bool:
    return len(await letters(namespace)) >= n


async def _effects_done(db: store.Store) -> bool:
    return not await db.pool.fetchval(
        "SELECT count(*) FROM bgworker_outbox WHERE status = 'pending'"
    )


@pytest.mark.both_storages
async def test_forget_leaves_nothing_of_the_person_and_everything_of_others(
    settings: settings_mod.Settings,
    db: store.Store,
    publish: Publish,
    publish_raw: PublishRaw,
    start_worker: StartWorker,
    cli: Cli,
) -> None:
    worker = await start_worker()
    made = await people(db, publish, publish_raw, settings.namespace)
    await wait_until(lambda: _effects_done(db))
    ann_ready = await wait_for_status(db, made[ANN][0], "ready")
    bob_ready = await wait_for_status(db, made[BOB][0], "ready")
    bob_bytes = await stored_bytes(settings, bob_ready)
    assert await tables_naming(db, ANN)  # the search finds her before
    assert {ann_ready.storage_key, bob_ready.storage_key} <= set(await stored_keys(settings))

    code, out, err = await cli("forget", "--requester", ANN.upper(), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["requests"] == 3 and report["pending"] == 1, report
    assert report["files"] == 1 and report["dead_letters"] == 2 and report["effects"] >= 2

    assert await tables_naming(db, ANN) == []
    # Nor her requester id: it was her requests' tenant too (fair share's default).
    assert await tables_naming(db, f"user-{ANN[:3]}") == []
    assert await stored_keys(settings) == [bob_ready.storage_key]
    assert await stored_bytes(settings, bob_ready) == bob_bytes
    left = await letters(settings.namespace)
    assert all(ANN.lower().encode() not in m.body.lower() for m in left)
    assert [json.loads(m.body)["id"] for m in left] == [str(made[BOB][1])]
    # Bob: untouched, the search finds him in rows, attempts, effects.
    assert {"bgworker_requests.requester_email", "bgworker_outbox.payload"} <= set(
        await tables_naming(db, BOB)
    )
    assert (await wait_for_status(db, made[BOB][0], "ready")).requester_email == BOB
    for request_id in made[BOB]:
        assert await db.requests.list_attempts(request_id)
    # The audit row: counts, and a hash that confirms the erasure to whoever has the address.
    [audit] = await db.erasure.audit()
    assert audit["requests"] == 3 and audit["subject_kind"] == "requester"
    assert await db.erasure.was_erased(erasure.Subject.requester(ANN))
    assert not await db.erasure.was_erased(erasure.Subject.requester(BOB))

    # Her requests' messages still on their way are acknowledged unbuilt: the pending one
    # (accepted by the front door) and a redelivery of her ready one.
    duplicates = worker.outcomes["duplicate"]
    await publish("blob", {"size": 10}, id=made["pending"][0], requester={"email": ANN})
    again = {"email": ANN, "id": f"user-{ANN[:3]}"}
    await publish("blob", {"size": 5000, "seed": len(ANN)}, id=made[ANN][0], requester=again)
    await wait_until(lambda: worker.outcomes["duplicate"] == duplicates + 2)
    assert await tables_naming(db, ANN) == []
    assert await stored_keys(settings) == [bob_ready.storage_key]

    code, out, _ = await cli("forget", "--requester", ANN, "--json")
    assert code == 0 and json.loads(out)["requests"] == 0
    assert len(await db.erasure.audit()) == 2


@pytest.fixture
def keyed(settings: settings_mod.Settings) -> settings_mod.Settings:
    settings.web.api_keys = [SecretStr(KEY)]
    return settings


async def _post_erasure(base: str, body: Any, key: str | None = KEY) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    status, _, content = await fetch(
        "POST", f"{base}/erasures", data=json.dumps(body), headers=headers
    )
    return status, json.loads(content)


@pytest.mark.both_storages
async def test_the_front_door_erases_too(
    keyed: settings_mod.Settings,
    db: store.Store,
    publish: Publish,
    start_worker: StartWorker,
    start_server: StartServer,
) -> None:
    await start_worker()
    base = await start_server()
    ann = await publish("blob", {"size": 100}, requester={"email": ANN})
    bob = await publish("blob", {"size": 100}, requester={"email": BOB})
    await wait_for_status(db, ann.id, "ready")
    await wait_for_status(db, bob.id, "ready")
    await wait_until(lambda: _effects_done(db))
    assert (await _post_erasure(base, {"requester": ANN}, key=None))[0] == 401
    assert (await _post_erasure(base, {"requester": "nobody"}))[0] == 422
    assert (await _post_erasure(base, ["x"]))[0] == 422
    status, report = await _post_erasure(base, {"requester": ANN})
    assert status == 200 and report["requests"] == 1 and report["files"] == 1, report
    assert ANN.lower() not in json.dumps(report).lower()
    assert await tables_naming(db, ANN) == []
    assert len(await stored_keys(keyed)) == 1


def _addresses(n: int) -> list[tuple[str, str]]:
    """Pairs of contract-valid addresses where the second contains the first (joann vs
    ann, a longer domain): what erasing one must never touch of the other."""
    out: list[tuple[str, str]] = []
    local = st.from_regex(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,20}", fullmatch=True)
    domain = st.from_regex(r"[a-z][a-z0-9]{0,10}\.(com|org|example)", fullmatch=True)

    @hypothesis_settings(max_examples=n, database=None, derandomize=True, phases=[Phase.generate])
    @given(local, domain, st.sampled_from(["jo", "x.", "a-"]), st.sampled_from([".au", "x"]))
    def collect(name: str, host: str, prefix: str, suffix: str) -> None:
        first = f"{name}@{host}"
        second = f"{prefix}{name}@{host}{suffix}" if suffix == ".au" else f"{prefix}{name}@{host}"
        if event_fields._check_email(first) is None and event_fields._check_email(second) is None:
            out.append((first, second))

    collect()
    return out


async def test_erasing_an_address_never_touches_a_longer_one(
    db: store.Store,
) -> None:
    pairs = _addresses(25)
    assert len(pairs) > 10
    for first, second in pairs:
        kept = events.FileRequested(id=uuid.uuid4(), file_type="blob", requester={"email": second})
        gone = events.FileRequested(id=uuid.uuid4(), file_type="blob", requester={"email": first})
        await insert_request(db, kept, 3)
        await insert_request(db, gone, 3)
        pattern = erasure.names(erasure.Subject.requester(first))
        assert pattern.search(json.dumps(gone.model_dump(mode="json")).encode())
        assert not pattern.search(json.dumps(kept.model_dump(mode="json")).encode()), (
            first,
            second,
        )
        erased = await db.erasure.erase(erasure.Subject.requester(first.upper()))
        assert erased.request_ids == [gone.id], (first, second)
        row = await db.requests.get_request(kept.id)
        assert row is not None and row.requester_email == second


async def test_forget_a_tenant_takes_every_request_that_counts_against_it(
    settings: settings_mod.Settings,
    db: store.Store,
    publish: Publish,
    start_worker: StartWorker,
    cli: Cli,
) -> None:
    """``--tenant``: the requests whose event names the tenant, and those whose requester's
    id is the tenant (a request naming none counts against its requester), with their files
    and dead letters; another tenant's, and a tenant differing only in case, untouched."""
    await start_worker()
    named = await publish("blob", {"size": 300}, tenant="acme", requester={"email": ANN})
    by_id = await publish("permanent", {"n": 1}, requester={"email": ANN, "id": "acme"})
    other = await publish("blob", {"size": 300}, tenant="Acme", requester={"email": BOB})
    failed_other = await publish("permanent", {"n": 2}, tenant="globex", requester={"email": BOB})
    kept = await wait_for_status(db, other.id, "ready")
    await wait_for_status(db, named.id, "ready")
    for request_id in (by_id.id, failed_other.id):
        await wait_for_status(db, request_id, "failed")
    await wait_until(lambda: _letters_of(settings.namespace, 2))
    await wait_until(lambda: _effects_done(db))

    code, out, err = await cli("forget", "--tenant", "acme", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["requests"] == 2 and report["files"] == 1 and report["dead_letters"] == 1
    assert await tables_naming(db, ANN) == []  # all of Ann's requests were acme's
    assert (await wait_for_status(db, other.id, "ready")).requester_email == BOB
    assert await stored_keys(settings) == [kept.storage_key]
    left = await letters(settings.namespace)
    assert [json.loads(m.body)["id"] for m in left] == [str(failed_other.id)]
    assert await db.erasure.was_erased(erasure.Subject.tenant("acme"))
    assert not await db.erasure.was_erased(erasure.Subject.tenant("Acme"))

    code, _, err = await cli("forget", "--tenant", "acme", "--requester", ANN)
    assert code == 2 and "not allowed with" in err  # one subject per erasure
    code, _, err = await cli("forget", "--tenant", "")
    assert code == 64 and "--tenant" in err


async def test_the_front_door_takes_one_subject(
    keyed: settings_mod.Settings, start_server: StartServer
) -> None:
    base = await start_server()
    both = {"requester": ANN, "tenant": "acme"}
    for body in (both, {}, {"tenant": 5}, {"tenant": ""}, {"who": "acme"}):
        status, answer = await _post_erasure(base, body)
        assert status == 422 and "tenant" in answer["error"], (body, answer)
    status, report = await _post_erasure(base, {"tenant": "nobody-here"})
    assert status == 200 and report["requests"] == 0, report
    # Strict JSON, refused as POST /requests refuses: a repeated key is never read as its
    # last value (which subject would be erased?), and what is not JSON is 400.
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
    for sent in (b'{"tenant": "acme", "tenant": "other"}', b"{not json", b'{"tenant": "a"'):
        status, _, content = await fetch("POST", f"{base}/erasures", data=sent, headers=headers)
        answer = json.loads(content)
        assert status == 400 and answer["reason"] == "malformed_json", (sent, answer)
    latin = headers | {"Content-Type": "application/json; charset=latin-1"}
    status, _, content = await fetch("POST", f"{base}/erasures", data=b"{}", headers=latin)
    assert status == 415 and json.loads(content)["status"] == 415
