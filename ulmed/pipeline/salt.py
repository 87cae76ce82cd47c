"""The run's key salt: the secret that keys every record key derived from a UID.

DICOM series are keyed by a hash of their SeriesInstanceUID (:func:`ulmed.io.dicom.scan_dicom`).
Unsalted, such a key in a manifest would let anyone who holds the source link a de-identified
output back to its series. The hash is therefore keyed by a secret that is never written
into the manifest:

* with ``--deidentify``, it is derived from the de-identification key;
* otherwise the user's ``$ULMED_KEY_SALT`` (or ``key_salt=``) when given, needed for parts
  that write into separate folders and for byte-identical reruns into a new folder;
* otherwise a random salt made by the first run and kept in ``.ulmed/secret`` beside the
  journal (every part that writes into the same folder shares it; a release deletes it).

Only a fingerprint of the salt goes into ``run.json``, so a resume with another salt is
refused instead of redoing the run under new keys.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from pathlib import Path

from ulmed.errors import ConfigError, OutputError, os_reason

#: Environment variable holding a user-chosen key salt.
KEY_SALT_ENV = "ULMED_KEY_SALT"
SECRET_FILE = "secret"


def derive_salt(deid_key: str | None, key_salt: str | None) -> str | None:
    """The salt given by the user (de-identification key first), or None when there is none.

    Raises:
        ConfigError: A given salt is shorter than 16 characters.
    """
    if deid_key:
        return hashlib.sha256(f"ulmed-key-salt:{deid_key}".encode()).hexdigest()
    salt = key_salt or os.environ.get(KEY_SALT_ENV)
    if salt is not None and len(salt) < 16:
        raise ConfigError(f"the key salt (${KEY_SALT_ENV} or key_salt=) needs at least 16 characters, "
                          "e.g. $(openssl rand -hex 16)")
    return salt or None


def stored_salt(control: Path) -> str | None:
    """The random salt an earlier run kept in ``control/secret``, if any."""
    try:
        return (control / SECRET_FILE).read_text().strip() or None
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise OutputError(f"cannot read the run's key salt ({os_reason(exc)}); check the output folder",
                          control / SECRET_FILE) from exc


def keep_salt(control: Path, salt: str) -> str:
    """Store a new random ``salt`` in ``control/secret`` unless a concurrent part stored one first.

    Returns:
        The salt now in the file (``salt``, or the one another part wrote an instant earlier).
    """
    path = control / SECRET_FILE
    try:
        control.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return stored_salt(control) or salt
    except OSError as exc:
        raise OutputError(f"cannot store the run's key salt ({os_reason(exc)}); check the output folder", path) from exc
    with os.fdopen(fd, "w") as fh:
        fh.write(salt)
        fh.flush()
        with contextlib.suppress(OSError):
            os.fsync(fh.fileno())
    return salt


def new_salt() -> str:
    """A fresh random salt."""
    return secrets.token_hex(16)


def salt_fingerprint(salt: str) -> str:
    """A short hash of the salt for ``run.json`` (tells salts apart; reveals nothing useful)."""
    return hashlib.sha256(f"ulmed-key-salt-fingerprint:{salt}".encode()).hexdigest()[:16]
