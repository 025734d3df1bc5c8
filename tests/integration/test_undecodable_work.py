"""Messages whose AMQP frames pamqp cannot decode (a timestamp header past the year 9999, a
short string that is not UTF-8) on the work queue: before ``bgworker.messaging.amqp_frames``, aiormq
closed the connection on each delivery, so the worker stopped working (quorum: for 20
reconnects, classic: forever). Now they are read leniently and dead-lettered like any other
bad event."""

from __future__ import annotations

import struct
from typing import Any

import aio_pika
import pamqp.encode
import pytest

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.messaging import broker, topology
from tests.helpers import AMQP_URL, DeadLetters, Publish, StartWorker, wait_for_status


class RawTimestamp(int):
    pass


NOT_UTF8 = "send-as-invalid-utf8"


@pytest.fixture
def undecodable_encoders(monkeypatch: pytest.MonkeyPatch) -> None:
    real_value = pamqp.encode.encode_table_value
    real_short = pamqp.encode.METHODS["shortstr"]

    def encode_value(value: Any) -> bytes:
        if isinstance(value, RawTimestamp):
            return b"T" + struct.pack(">Q", int(value))
        return real_value(value)

    def encode_short(value: str) -> bytes:
        return b"\x02\xff\xfe" if value == NOT_UTF8 else real_short(value)

    monkeypatch.setattr(pamqp.encode, "encode_table_value", encode_value)
    monkeypatch.setitem(pamqp.encode.METHODS, "shortstr", encode_short)


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
async def test_a_message_the_client_cannot_decode_does_not_stop_the_worker(
    db: store.Store,
    settings: settings_mod.Settings,
    amqp: aio_pika.abc.AbstractChannel,
    publish: Publish,
    start_worker: StartWorker,
    undecodable_encoders: None,
    dead: DeadLetters,
    queue_type: str,
) -> None:
    w = await start_worker()
    connection = await aio_pika.connect(AMQP_URL)
    channel = await broker.open_channel(connection)  # type: ignore[arg-type]
    topo = topology.Topology(settings.namespace, queue_type=settings.queue_type)
    bad = [
        aio_pika.Message(b'{"bad": 1}', headers={"x-when": RawTimestamp(2**63 - 1)}),
        aio_pika.Message(b'{"bad": 2}', correlation_id=NOT_UTF8),
    ]
    for message in bad:
        await broker.publish(channel, topo.requests_exchange, topology.REQUESTED_KEY, message)
    await connection.close()
    good = await publish("blob", {"size": 10})
    await wait_for_status(db, good.id, "ready", timeout=20)
    # Both are dead letters with a reason (their bodies are not events), delivered once.
    letters = await dead.wait_for(2)
    assert sorted(m.body for m in letters) == [b'{"bad": 1}', b'{"bad": 2}']
    assert {m.headers["x-bgworker-reason"] for m in letters} == {"invalid_schema"}
    assert w.outcomes["invalid"] == 2 and w.outcomes["error"] == 0
