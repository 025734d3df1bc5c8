"""The job every throughput contender does: a 10 KiB CSV, its state recorded in PostgreSQL.

bgworker runs it as the ``bench_csv`` handler (``bench.handlers``); Celery and the floor run
``csv_bytes`` + ``write_atomic`` themselves and record queued/running/ready in ``bench_jobs``
with the statements below. Files are written the way bgworker writes them (temp file, fsync,
rename, fsync of the directory, sha256 while writing), so storage costs the same for all.
"""

from __future__ import annotations

import hashlib
import os
import random
import uuid
from pathlib import Path
from typing import Final

CSV_SIZE: Final = 10 * 1024
_HEADER: Final = b"timestamp,user,ip_address,result,amount\n"
_USERS: Final = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi")

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS bench_jobs (
    id          uuid PRIMARY KEY,
    status      text NOT NULL,
    attempts    integer NOT NULL DEFAULT 0,
    size_bytes  bigint,
    sha256      text,
    path        text,
    received_at timestamptz NOT NULL DEFAULT now(),
    started_at  timestamptz,
    finished_at timestamptz
);
"""
# One statement per state change, as a plain task queue user would write them.
INSERT_QUEUED: Final = (
    "INSERT INTO bench_jobs (id, status) VALUES ($1, 'queued') ON CONFLICT (id) DO NOTHING"
)
MARK_RUNNING: Final = (
    "UPDATE bench_jobs SET status = 'running', attempts = attempts + 1, started_at = now() "
    "WHERE id = $1"
)
MARK_READY: Final = (
    "UPDATE bench_jobs SET status = 'ready', size_bytes = $2, sha256 = $3, path = $4, "
    "finished_at = now() WHERE id = $1"
)


def psycopg_sql(statement: str) -> str:
    """The same statement with psycopg's named placeholders: ``$2`` becomes ``%(p2)s``."""
    for n in range(9, 0, -1):
        statement = statement.replace(f"${n}", f"%(p{n})s")
    return statement


def psycopg_params(*values: object) -> dict[str, object]:
    return {f"p{n}": v for n, v in enumerate(values, 1)}


def csv_bytes(seed: int, size: int = CSV_SIZE) -> bytes:
    """A deterministic CSV of exactly ``size`` bytes."""
    rng = random.Random(seed)
    out = bytearray(_HEADER)
    t = 1_767_225_600 + seed
    while len(out) < size:
        t += rng.randint(1, 90)
        line = (
            f"{t},{rng.choice(_USERS)},10.{rng.randint(0, 255)}.{rng.randint(0, 255)}."
            f"{rng.randint(1, 254)},{'ok' if rng.random() < 0.9 else 'denied'},"
            f"{rng.randint(0, 99999) / 100:.2f}\n"
        )
        out += line.encode()
    return bytes(out[:size])


def key_for(request_id: uuid.UUID) -> str:
    rid = str(request_id)
    return f"{rid[:2]}/{rid}"


def write_atomic(root: Path, key: str, data: bytes) -> tuple[int, str]:
    """temp + fsync + rename + fsync(dir), like bgworker.storage; returns (size, sha256)."""
    final = root / key
    temp = root / ".tmp" / f"{final.name}.{uuid.uuid4().hex}.part"
    digest = hashlib.sha256(data).hexdigest()
    with open(temp, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    final.parent.mkdir(parents=True, exist_ok=True)
    os.rename(temp, final)
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return len(data), digest
