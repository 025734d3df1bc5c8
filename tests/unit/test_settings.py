"""Settings validation that protects broker names."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from bgworker import settings as settings_mod


@pytest.mark.parametrize("namespace", ["bgworker", "t-0a1b2c", "prod.eu_1"])
def test_good_namespaces(namespace: str) -> None:
    assert settings_mod.Settings(namespace=namespace).namespace == namespace


@pytest.mark.parametrize("namespace", ["", "Upper", "-lead", "a b", "abc\n", "x" * 64])
def test_bad_namespaces_are_refused(namespace: str) -> None:
    with pytest.raises(ValidationError, match="namespace"):
        settings_mod.Settings(namespace=namespace)
