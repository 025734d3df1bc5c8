"""Property: whatever a producer publishes ends, within seconds, in exactly one of a ready
file or a dead letter with a reason, and no delivery is handled more often than the retry
policy allows. The documents come from hypothesis (valid-looking events with hostile
fields, and arbitrary JSON); a bounded sample goes through a real worker."""

from __future__ import annotations

import json
import uuid
from typing import Any

import aio_pika
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from bgworker import store
from tests.helpers import DeadLetters, PublishRaw, StartWorker, wait_until

SAMPLE = 40

# Text of any kind: control characters, line separators, bidi controls, lone surrogates
# (json.dumps writes them as \\udxxx escapes, as a hostile producer would).
_text = st.text(st.characters(exclude_categories=()), max_size=12)
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)
# A size the blob handler would take as one (an int or a float, not a bool): bounded, as a
# valid request for 2**53 bytes would rightly run for days, not end within the test's wait.
_size = st.integers(-5, 3000) | _json.filter(
    lambda v: isinstance(v, bool) or not isinstance(v, int | float) or abs(v) <= 100_000
)
_valid_looking = st.fixed_dictionaries(
    {
        "id": st.uuids().map(str),
        "file_type": st.sampled_from(["blob", "blob", "blob", "no_such_type"]) | _text,
        "filename": st.sampled_from(["a.csv", "report.bin"]) | _text,
        "criteria": st.fixed_dictionaries({"size": _size}) | _json,
    },
    optional={
        "content_type": st.sampled_from(["text/csv", "application/pdf; q=1"]) | _text,
        "description": _text,
        "requester": st.fixed_dictionaries(
            {},
            optional={
                "email": st.emails() | _text,
                "language": st.sampled_from(["en", "fr", "pt-BR"]) | _text,
                "timezone": st.sampled_from(["UTC", "Europe/Brussels"]) | _text,
            },
        )
        | _json,
        "requested_at": st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()) | _text,
        "lifetime_seconds": st.integers() | _json,
        "schema_version": st.sampled_from([1, 1, 2, True, "1"]),
    },
)
# Valid events whose criteria the handler may choke on (retried, then failed).
_valid = st.fixed_dictionaries(
    {
        "id": st.uuids().map(str),
        "file_type": st.just("blob"),
        "filename": st.sampled_from(["a.csv", "report.bin", "données.csv"]),
        "criteria": st.fixed_dictionaries({"size": _size}),
    }
)
_document = st.one_of(_valid, _valid_looking, _json)


def _sample(n: int) -> list[Any]:
    """n varied documents, the same on every run: hypothesis drives the generation (its
    first examples are the simplest, so one example of a list would be all-trivial)."""
    out: list[Any] = []
    ids: set[str] = set()

    @settings(max_examples=10 * n, database=None, derandomize=True, phases=[Phase.generate])
    @given(_document)
    def collect(doc: Any) -> None:
        # A repeated id (or body) would rightly be a duplicate: keep the first only.
        keys = {json.dumps(doc), str(doc.get("id") if isinstance(doc, dict) else None)}
        if not keys & ids:
            ids.update(keys - {"None"})
            out.append(doc)

    collect()
    return out[:n]


def _id_of(doc: Any) -> uuid.UUID | None:
    if isinstance(doc, dict):
        try:
            return uuid.UUID(str(doc.get("id")))
        except ValueError:
            return None
    return None


async def test_every_published_document_ends_ready_or_dead_lettered_once(
    db: store.Store, publish_raw: PublishRaw, start_worker: StartWorker, dead: DeadLetters
) -> None:
    docs = _sample(SAMPLE)
    w = await start_worker()
    bodies = [json.dumps(doc).encode() for doc in docs]
    # Ids must be unique here, or a second document would rightly be a duplicate.
    ids = [_id_of(doc) for doc in docs]
    seen_ids = [i for i in ids if i is not None]
    assert len(seen_ids) == len(set(seen_ids))
    for body in bodies:
        await publish_raw(body)

    max_attempts = 4  # the test settings' global max_attempts

    queue = await dead.channel.get_queue(dead.name, ensure=False)

    async def settled() -> bool:
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            dead.seen.append(message)
        lettered = {m.body for m in dead.seen}
        for body, rid in zip(bodies, ids, strict=True):
            if body in lettered:
                continue
            row = await db.requests.get_request(rid) if rid is not None else None
            if row is None or row.status != "ready":
                return False
        return True

    await wait_until(settled, timeout=60)
    letters: dict[bytes, list[aio_pika.abc.AbstractIncomingMessage]] = {}
    for message in dead.seen:
        letters.setdefault(message.body, []).append(message)
    deliveries = 0
    ready = 0
    for body, rid in zip(bodies, ids, strict=True):
        row = await db.requests.get_request(rid) if rid is not None else None
        got = letters.get(body, [])
        if row is not None and row.status == "ready":
            assert got == [], body  # ready, so never dead-lettered too
            deliveries += row.attempts
            ready += 1
            continue
        # Exactly one letter, with a reason; and a failed row when the document had an id
        # that a row could be recorded under.
        assert len(got) == 1, body
        assert got[0].headers["x-bgworker-reason"], body
        if row is not None:
            assert row.status == "failed" and row.failure_reason, body
            assert row.attempts <= max_attempts
            deliveries += max(row.attempts, 1)
        else:
            deliveries += 1
    # Every delivery the worker handled is accounted for: nothing was redelivered beyond the
    # retry policy (a held or handed-back poison message would add deliveries).
    await wait_until(lambda: sum(w.outcomes.values()) >= deliveries, timeout=10)
    assert sum(w.outcomes.values()) == deliveries, dict(w.outcomes)
    assert w.outcomes["error"] == 0
    # The sample exercised both ends (derandomized, so this is stable).
    assert 0 < ready < len(docs), (ready, dict(w.outcomes))
    print(f"{len(docs)} documents: {ready} ready, outcomes {dict(w.outcomes)}")
