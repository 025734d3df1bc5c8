"""The admin console's server-side sessions and shared secrets (``admin_sessions.sql``,
tables from migration 0006), and its login throttle (0012). Tokens arrive already hashed:
this module never sees a cookie.
"""

from __future__ import annotations

from typing import Final

import asyncpg

from bgworker.store import queries

Q: Final = queries.QUERIES


class AdminSessions:
    """The store's console part (``Store.admin_sessions``)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def secret(self, name: str, candidate: bytes) -> bytes:
        """The stored value of ``name``; ``candidate`` is stored first if there is none, so
        every server process ends up with the first one's value."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(Q["admin_secret_insert"], name, candidate)
            value: bytes = await conn.fetchval(Q["admin_secret_get"], name)
        return value

    async def replace_secret(self, name: str, value: bytes, *, end_sessions: bool) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(Q["admin_secret_set"], name, value)
            if end_sessions:
                await conn.execute(Q["admin_sessions_delete_all"])

    async def create(self, token_hash: bytes, user: str, csrf: str, seconds: float) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(Q["admin_sessions_delete_expired"])
            await conn.execute(Q["admin_session_insert"], token_hash, user, csrf, seconds)

    async def get(self, token_hash: bytes) -> tuple[str, str] | None:
        """(user, CSRF token) of a live session, or None."""
        row = await self.pool.fetchrow(Q["admin_session_get"], token_hash)
        return None if row is None else (row["username"], row["csrf"])

    async def delete(self, token_hash: bytes) -> None:
        await self.pool.execute(Q["admin_session_delete"], token_hash)

    # -- the login throttle ---------------------------------------------------------------

    async def login_attempt(self, client: str, limit: int, window: float) -> float | None:
        """Record one login attempt of ``client``, counted as a failure until
        ``login_succeeded``; unless ``client`` has ``limit`` failures within the last
        ``window`` seconds: then nothing is recorded and the seconds until the oldest of them
        leaves the window are returned."""
        await self.pool.execute(Q["admin_login_failures_prune"], window)
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(Q["admin_login_lock"], client)
            recent = await conn.fetchrow(Q["admin_login_failures_recent"], client, window)
            if recent["failures"] >= limit:
                wait: float = recent["wait"]
                return wait
            await conn.execute(Q["admin_login_failure_insert"], client)
        return None

    async def login_succeeded(self, client: str) -> None:
        """A right password: ``client``'s failures are forgotten."""
        await self.pool.execute(Q["admin_login_failures_clear"], client)
