"""Decoding AMQP frames that a hostile or foreign producer can send and pamqp refuses.

RabbitMQ passes on a timestamp header past the year 9999 and short strings (message id,
correlation id, table keys) that are not UTF-8. pamqp, the frame codec under aiormq and
aio-pika, raises on them while unmarshalling the frame; aiormq then closes the whole
connection, the robust connection reconnects, and the broker redelivers the same message to
the same fate. On a quorum queue that stops the worker for 20 reconnects (about two minutes)
before the broker dead-letters it; on a classic queue, forever. A message must end as a
dead letter with a reason, not take the connection down, so bgworker decodes these values
leniently instead: a timestamp that is no date stays its integer, and undecodable text is
decoded with U+FFFD replacements (the body, which is all bgworker reads, is untouched).

``install()`` swaps the lenient decoders into pamqp's dispatch tables; it is idempotent
and called when bgworker opens a broker connection.
"""

from __future__ import annotations

import datetime
import struct
from typing import Final

import pamqp.common
import pamqp.decode

_STRICT_TIMESTAMP: Final = pamqp.decode.timestamp
# pamqp's own decoders, for `uninstall` (tests that need a frame nobody can decode).
STRICT: Final = (
    dict(pamqp.decode.METHODS),
    dict(pamqp.decode.TABLE_MAPPING),
)


def timestamp(value: bytes) -> tuple[int, datetime.datetime | int]:
    try:
        return _STRICT_TIMESTAMP(value)
    except (ValueError, OverflowError, OSError):
        # Not a date Python can hold: keep the number the producer sent.
        try:
            return 8, int(pamqp.common.Struct.timestamp.unpack(value[0:8])[0])
        except struct.error as err:
            raise ValueError("Could not unpack timestamp value") from err


def short_str(value: bytes) -> tuple[int, str]:
    try:
        length = pamqp.common.Struct.byte.unpack(value[0:1])[0]
    except struct.error as err:
        raise ValueError("Could not unpack short string value") from err
    return length + 1, value[1 : length + 1].decode("utf-8", "replace")


def field_table(value: bytes) -> tuple[int, pamqp.common.FieldTable]:
    """pamqp's field_table with lenient keys (it decodes them as strict UTF-8)."""
    try:
        length = pamqp.common.Struct.integer.unpack(value[0:4])[0]
        offset = 4
        data: pamqp.common.FieldTable = {}
        end = offset + length
        if end > len(value):
            raise ValueError("Field table length exceeds available data")
        while offset < end:
            key_length = pamqp.common.Struct.byte.unpack_from(value, offset)[0]
            offset += 1
            if offset + key_length > end:
                raise ValueError("Field table key length exceeds data")
            key = value[offset : offset + key_length].decode("utf-8", "replace")
            offset += key_length
            consumed, result = pamqp.decode.embedded_value(value[offset:])
            offset += consumed
            data[key] = result
        return end, data
    except (struct.error, TypeError) as err:
        raise ValueError("Could not unpack data") from err


def uninstall() -> None:
    pamqp.decode.METHODS.update(STRICT[0])
    pamqp.decode.TABLE_MAPPING.update(STRICT[1])


def install() -> None:
    pamqp.decode.METHODS["timestamp"] = timestamp
    pamqp.decode.METHODS["shortstr"] = short_str
    pamqp.decode.METHODS["table"] = field_table
    pamqp.decode.TABLE_MAPPING[b"T"] = timestamp
    pamqp.decode.TABLE_MAPPING[b"F"] = field_table
