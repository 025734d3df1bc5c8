"""Progress a handler reports: counts of objects done and in all (like Shopify's bulk
operation object counts and Salesforce's records processed), and the fraction shown."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    """What a handler last reported: counts (``done`` of ``total`` objects, like Shopify's
    bulk operation object counts) and the fraction the status pages show."""

    done: int | None
    total: int | None
    fraction: float | None


def _count(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"progress: {name} must be an integer >= 0, got {value!r}")
    return value


def of(done: int, total: int | None) -> Progress:
    """Validate a count report. ``total`` None: not known yet (the fraction stays unset)."""
    done = _count("done", done)
    if total is None:
        return Progress(done, None, None)
    total = _count("total", total)
    if done > total:
        raise ValueError(f"progress: done ({done}) is more than total ({total})")
    return Progress(done, total, done / total if total else 1.0)


def percent(fraction: float | None) -> float | None:
    """A percentage with one decimal, for people: 65.0, not 64.99999761581421."""
    return None if fraction is None else round(100 * fraction, 1)
