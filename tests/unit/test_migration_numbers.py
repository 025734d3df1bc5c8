"""Migration numbers: a gap is a decision, written down (store/migrations.py, SKIPPED)."""

from __future__ import annotations

from bgworker.store import migrations


def test_the_only_gaps_are_the_skipped_numbers() -> None:
    versions = [m.version for m in migrations.available()]
    gaps = set(range(1, max(versions) + 1)) - set(versions)
    # A new gap: a migration numbered past one another branch has not landed yet, or one
    # renumbered; a skipped number in use would run out of order on databases past it.
    assert gaps == migrations.SKIPPED
    assert len(versions) == len(set(versions))
