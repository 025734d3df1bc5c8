"""``login_events``: a CSV export of synthetic login events, dj-bgfiles' README example.

Criteria: ``rows`` (default 1000), ``seed`` (default 0), ``user`` (optional filter label).
The output is a pure function of criteria, language and timezone, so a retried or
redelivered request produces the same bytes.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Final

from bgworker import handlers, storage

registry = handlers.Registry()

MAX_ROWS: Final = 50_000_000
# Rows per write: small enough that the event loop (heartbeats, other jobs) is never
# blocked for more than a few milliseconds.
BATCH_ROWS: Final = 500
_EPOCH: Final = datetime(2026, 1, 1, tzinfo=UTC)
HEADERS: Final[dict[str, tuple[str, ...]]] = {
    "en": ("timestamp", "user", "ip_address", "result", "user_agent"),
    "nl": ("tijdstip", "gebruiker", "ip_adres", "resultaat", "user_agent"),
    "de": ("zeitpunkt", "benutzer", "ip_adresse", "ergebnis", "user_agent"),
    "fr": ("horodatage", "utilisateur", "adresse_ip", "resultat", "user_agent"),
}
_AGENTS: Final = ("Firefox/133.0", "Chrome/131.0", "Safari/18.1", "curl/8.11", "okhttp/4.12")
_USERS: Final = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi")


def _int_criterion(criteria: Mapping[str, object], name: str, default: int, hi: int) -> int:
    value = criteria.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= hi:
        raise handlers.PermanentError(f"criteria.{name} must be an integer in 0..{hi}")
    return value


@registry.handler("login_events", extension="csv", content_type="text/csv; charset=utf-8")
async def login_events(ctx: handlers.JobContext, out: storage.FileWriter) -> None:
    criteria = dict(ctx.criteria)
    rows = _int_criterion(criteria, "rows", 1000, MAX_ROWS)
    seed = _int_criterion(criteria, "seed", 0, 2**63)
    user = criteria.get("user")
    if user is not None and not isinstance(user, str):
        raise handlers.PermanentError("criteria.user must be a string")
    rng = random.Random(seed)
    tz = ctx.timezone
    header = HEADERS.get(ctx.language.split("-")[0].lower(), HEADERS["en"])
    await out.write((",".join(header) + "\n").encode())
    moment = _EPOCH
    done = 0
    while done < rows:
        batch = min(BATCH_ROWS, rows - done)
        lines = []
        for _ in range(batch):
            moment += timedelta(seconds=rng.randint(1, 90))
            who = user or rng.choice(_USERS)
            ip = f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
            result = "ok" if rng.random() < 0.9 else "denied"
            stamp = moment.astimezone(tz).isoformat(timespec="seconds")
            lines.append(f"{stamp},{who},{ip},{result},{rng.choice(_AGENTS)}\n")
        await out.write("".join(lines).encode())
        done += batch
        ctx.report_progress(done, rows)
        # Generation is CPU-bound: yield so heartbeats and other jobs keep running.
        await asyncio.sleep(0)
