"""``bgworker status BUNDLE_ID``: a bundle (docs/bundles.md) as an operator sees it, its
parts each with its status and whether the bundle has ended.

``status`` reads the id as a request's first; an id that is no request's but a bundle's is
shown here (each part stays a request of its own: ``bgworker status PART_ID``)."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from typing import Any

from bgworker import store


async def show(db: store.Store, bundle_id: uuid.UUID, *, as_json: bool) -> bool:
    """Print the bundle; False when no bundle has this id."""
    bundle = await db.bundles.get(bundle_id)
    if bundle is None:
        return False
    parts = await db.bundles.parts(bundle_id)
    if as_json:
        print(json.dumps(to_json(bundle, parts), indent=2))
    else:
        print("\n".join(summary(bundle, parts)))
    return True


def to_json(bundle: store.BundleRow, parts: list[store.RequestRow]) -> dict[str, Any]:
    return {
        "id": str(bundle.id),
        "kind": "bundle",
        "parts": bundle.parts,
        "tenant": bundle.tenant,
        "requester_id": bundle.requester_id,
        "created_at": bundle.created_at.isoformat(),
        "finished_at": bundle.finished_at.isoformat() if bundle.finished_at else None,
        "cancel_requested": bundle.cancel_requested,
        "part_status": [
            {
                "index": p.bundle_index,
                "id": str(p.id),
                "file_type": p.file_type,
                "status": str(p.status),
            }
            for p in parts
        ],
    }


def summary(bundle: store.BundleRow, parts: list[store.RequestRow]) -> list[str]:
    counts = Counter(str(p.status) for p in parts)
    tally = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    if bundle.finished_at is not None:
        state = f"ended {bundle.finished_at:%Y-%m-%d %H:%M:%S %Z}"
    elif bundle.cancel_requested:
        state = "cancel requested"
    else:
        state = "in progress"
    lines = [
        f"bundle {bundle.id}: {bundle.parts} part(s) ({tally or 'none recorded'}); {state}",
        f"  tenant {bundle.tenant}, created {bundle.created_at:%Y-%m-%d %H:%M:%S %Z}",
    ]
    for p in parts:
        lines.append(f"  part {p.bundle_index}: {p.id}  {p.file_type}  {p.status}")
    lines.append("  (each part is a request: bgworker status PART_ID)")
    return lines
