"""``bgworker status --tenant T``: one tenant's share of the deployment (fair share): its
requests running under a live lease against its cap, parked at the cap, queued, and how much
of each quota it used."""

from __future__ import annotations

import argparse
import json
from typing import Any

from bgworker import settings as settings_mod
from bgworker import store
from bgworker.contract import fairness


async def read(db: store.Store, tenant: str, limits: fairness.FairnessSettings) -> dict[str, Any]:
    """The tenant's counts, cap and quota usage, as ``--json`` prints them."""
    counts = await db.fairness.tenant_counts(tenant, limit=1)
    found = counts[0] if counts else store.TenantCounts(tenant, 0, 0, 0)
    quotas = {}
    for name, limit, window in limits.quotas():
        used, frees_in = await db.fairness.quota_usage(tenant, window)
        quotas[name] = {"limit": limit, "used": used, "next_frees_in_seconds": round(frees_in)}
    return {
        "tenant": tenant,
        "running": found.in_flight,
        "cap": limits.tenant_cap(tenant),
        "parked": found.parked,
        "queued": found.queued,
        "quotas": quotas,
    }


def summary(data: dict[str, Any]) -> list[str]:
    cap = f" (cap {data['cap']})" if data["cap"] else " (no cap)"
    lines = [
        f"tenant {data['tenant'] or '(none)'}: {data['running']} running{cap}, "
        f"{data['parked']} parked (waiting for a slot), {data['queued']} queued"
    ]
    for name, q in data["quotas"].items():
        lines.append(
            f"quota {name.replace('_', ' ')}: {q['used']} of {q['limit']} used"
            + (
                f", the oldest leaves the window in {q['next_frees_in_seconds']}s"
                if q["used"]
                else ""
            )
        )
    return lines


async def run(settings: settings_mod.Settings, args: argparse.Namespace) -> int:
    async with store.opened(settings.database_url.get_secret_value()) as db:
        data = await read(db, args.tenant, settings.fairness)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print("\n".join(summary(data)))
    return 0
