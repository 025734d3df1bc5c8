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


def test_api_keys_are_comma_separated_for_rotation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BGWORKER_WEB__API_KEYS", "old-key-0123456789, new-key-0123456789")
    keys = settings_mod.Settings().web.api_keys
    assert [k.get_secret_value() for k in keys] == ["old-key-0123456789", "new-key-0123456789"]
    assert "0123456789" not in repr(settings_mod.Settings().web)  # secrets stay hidden


def test_a_short_api_key_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BGWORKER_WEB__API_KEYS", "good-key-0123456789,short")
    with pytest.raises(ValidationError, match="at least 16 characters"):
        settings_mod.Settings()


@pytest.mark.parametrize("prefix", ["/_bgworker_files/", "/files/", "/a/b-c.d/"])
def test_good_accel_prefixes(prefix: str) -> None:
    assert settings_mod.WebSettings(accel_prefix=prefix).accel_prefix == prefix


# The prefix goes in front of a storage key in X-Accel-Redirect: no query, no fragment, no
# space, and a leading and trailing slash so prefix + key is one absolute path.
@pytest.mark.parametrize(
    "prefix",
    ["", "/", "files/", "/files", "/a?b/", "/a#b/", "/a b/", "http://x/", "/a\n/", "/a/\n"],
)
def test_bad_accel_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(ValidationError, match="accel_prefix"):
        settings_mod.WebSettings(accel_prefix=prefix)


@pytest.mark.parametrize("workers", [0, -1, 257])
def test_serve_workers_are_bounded(workers: int) -> None:
    with pytest.raises(ValidationError, match="workers"):
        settings_mod.WebSettings(workers=workers)
