"""The key salt: given, derived from the de-identification key, or random and kept in .ulmed/secret."""

from __future__ import annotations

import pytest

from ulmed.errors import ConfigError
from ulmed.pipeline.salt import (
    KEY_SALT_ENV,
    SECRET_FILE,
    derive_salt,
    keep_salt,
    new_salt,
    salt_fingerprint,
    stored_salt,
)


def test_the_deidentification_key_comes_first_then_the_given_salt(monkeypatch):
    monkeypatch.setenv(KEY_SALT_ENV, "from-the-environment-0123")
    from_key = derive_salt("a-secret-deid-key-0123", "given-salt-0123456789")
    assert from_key == derive_salt("a-secret-deid-key-0123", None) and len(from_key) == 64
    assert derive_salt(None, "given-salt-0123456789") == "given-salt-0123456789"
    assert derive_salt(None, None) == "from-the-environment-0123"
    monkeypatch.delenv(KEY_SALT_ENV)
    assert derive_salt(None, None) is None


def test_a_short_salt_is_refused(monkeypatch):
    monkeypatch.delenv(KEY_SALT_ENV, raising=False)
    with pytest.raises(ConfigError, match="at least 16 characters"):
        derive_salt(None, "short")


def test_the_first_part_keeps_its_salt_and_the_next_ones_read_it(tmp_path):
    control = tmp_path / ".ulmed"
    assert stored_salt(control) is None
    first, second = new_salt(), new_salt()
    assert first != second and len(first) == 32
    assert keep_salt(control, first) == first
    assert keep_salt(control, second) == first  # another part stored one first: that one wins
    assert stored_salt(control) == first
    assert (control / SECRET_FILE).stat().st_mode & 0o777 == 0o600


def test_the_fingerprint_tells_salts_apart_without_showing_them():
    a, b = salt_fingerprint("salt-number-one-0123"), salt_fingerprint("salt-number-two-0123")
    assert a == salt_fingerprint("salt-number-one-0123") and a != b and len(a) == 16
    assert "salt" not in a
