"""Erasing one person's data from PostgreSQL (``erasure.sql``; ``bgworker forget`` in
``ops.erasure`` adds the files and the dead-letter queue).

One transaction: the person's requests are locked, what hangs off them deleted (attempts,
effects, dead-letter action records, the front door's and the producer outbox's copies),
and each row turned into a scrubbed placeholder: a row is kept, emptied, rather than
deleted, so a delivery of the request still on its way (work or retry queue) is
acknowledged unbuilt instead of recording the person again. Requests accepted but not yet
recorded get such a placeholder too. The audit row records a salted hash, never the
address.

A subject is a kind and a value: the requester's email address (``requester``), or a
tenant (``tenant``: every request that counts against it, ``events.tenant_of``); each kind
has its finding queries in ``FIND``, the rest is shared.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

import asyncpg

from bgworker.store import queries

Q: Final = queries.QUERIES
bind: Final = queries.bind

# Per kind of subject: the query finding its recorded requests (locked), and the one
# finding those accepted but not recorded yet.
FIND: Final[dict[str, tuple[str, str]]] = {
    "requester": ("erase_find_requester", "erase_pending_requester"),
    "tenant": ("erase_find_tenant", "erase_pending_tenant"),
}


@dataclass(frozen=True)
class Subject:
    """Whose data to erase: ``Subject.requester("ann@example.com")``."""

    kind: str
    value: str

    @classmethod
    def requester(cls, email: str) -> Subject:
        # Addresses are matched case-insensitively: erasing too much of one person's data
        # beats leaving some behind (mail domains are case-insensitive; local parts almost
        # always are in practice).
        return cls("requester", email.strip().lower())

    @classmethod
    def tenant(cls, name: str) -> Subject:
        # Exact: a tenant is an identifier the producer chose (the contract's pattern), not
        # an address; "acme" and "Acme" are two tenants to the caps, so to erasure too.
        return cls("tenant", name)

    def digest(self, salt: bytes) -> str:
        return hashlib.sha256(salt + self.value.encode("utf-8")).hexdigest()


@dataclass
class Erased:
    """What an erasure removed from PostgreSQL; ``storage_keys`` are the files it found,
    for the caller to delete once no other row points to them."""

    request_ids: list[uuid.UUID] = field(default_factory=list)
    pending_ids: list[uuid.UUID] = field(default_factory=list)
    storage_keys: list[str] = field(default_factory=list)
    effects: int = 0
    schedules: int = 0  # deleted with their recorded periods


class Erasure:
    """The store's erasure part (``Store.erasure``)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def erase(self, subject: Subject) -> Erased:
        find, pending = FIND[subject.kind]
        erased = Erased()
        async with self.pool.acquire() as conn, conn.transaction():
            for record in await conn.fetch(Q[find], subject.value):
                erased.request_ids.append(record["id"])
                if record["storage_key"]:
                    erased.storage_keys.append(record["storage_key"])
            known = set(erased.request_ids)
            erased.pending_ids = [
                r[0] for r in await conn.fetch(Q[pending], subject.value) if r[0] not in known
            ]
            ids = erased.request_ids + erased.pending_ids
            erased.effects = int(await conn.fetchval(Q["erase_dependents"], ids))
            await conn.execute(Q["erase_placeholders"], erased.pending_ids)
            # The pending ones too: a worker may have recorded one since it was found (the
            # placeholder's insert then waited for that row and left it as it was).
            await conn.execute(Q["erase_rows"], ids)
            query = f"erase_schedules_{subject.kind}"
            erased.schedules = int(await conn.fetchval(Q[query], subject.value))
        return erased

    async def record(
        self,
        subject: Subject,
        *,
        actor: str,
        erased: Erased,
        files: int,
        dead_letters: int,
    ) -> tuple[int, datetime]:
        """The audit row: counts and a salted hash of the subject, never the subject."""
        salt = secrets.token_bytes(16)
        record = await self.pool.fetchrow(
            *bind(
                "erase_record",
                kind=subject.kind,
                salt=salt,
                hash=subject.digest(salt),
                actor=actor,
                requests=len(erased.request_ids),
                files=files,
                effects=erased.effects,
                dead_letters=dead_letters,
                pending=len(erased.pending_ids),
                schedules=erased.schedules,
            )
        )
        return record["id"], record["at"]

    async def audit(self) -> list[dict[str, object]]:
        return [dict(r) for r in await self.pool.fetch(Q["erase_audit"])]

    async def was_erased(self, subject: Subject) -> bool:
        """Whether an audit row matches ``subject`` (its hash under each row's salt)."""
        for row in await self.pool.fetch(Q["erase_audit"]):
            if row["subject_kind"] == subject.kind and row["subject_hash"] == subject.digest(
                bytes(row["subject_salt"])
            ):
                return True
        return False
