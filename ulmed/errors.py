"""One exception family for everything ulmed raises on purpose.

Every message names the file (when there is one) and says what to do, because the
CLI prints exactly ``str(error)`` on one line.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path


class UlmedError(Exception):
    """Base class of all errors that ulmed raises deliberately.

    Args:
        message: What went wrong and what to do about it.
        path: The file or folder concerned, if any; it is prefixed to the message.
    """

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else str(path)
        self.reason = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


class InputError(UlmedError):
    """An input file or folder cannot be used (unreadable, truncated, wrong kind, bad values)."""


class MissingDependencyError(UlmedError):
    """An optional package is needed (a DICOM codec, Ray, a de-identifier)."""


class OutputError(UlmedError):
    """The output cannot be written where it was asked (inside the input, not writable, ...)."""


class ConfigError(UlmedError):
    """A parameter or configuration value is invalid."""


def os_reason(exc: OSError) -> str:
    """The operating system's reason for ``exc`` in words, never ``None``.

    ``OSError(errno.ENOSPC, None)`` and errors raised by libraries without a message carry
    no ``strerror``; the reason is then read from the error number, else from the error text.

    Args:
        exc: The error.

    Returns:
        E.g. ``"No space left on device"``.
    """
    if exc.strerror:
        return exc.strerror
    if exc.errno:
        text = os.strerror(exc.errno)
        return text if text and not text.startswith("Unknown error") else errno.errorcode.get(exc.errno, str(exc.errno))
    return str(exc) or type(exc).__name__


def cannot_read(exc: OSError) -> str:
    """What to say about an input the system would not read: the reason, and what to check."""
    hint = "check its permissions" if isinstance(exc, PermissionError) else "check the input"
    return f"cannot be read ({os_reason(exc)}); {hint}, then rerun"


def unreadable(exc: BaseException) -> str | None:
    """:func:`cannot_read` for an input that the system refuses to read (no permission), else None.

    Readers wrap every error of a file's library in their own words ("truncated or not a valid
    image"); a refused read is not the file's fault, and re-exporting it would not help.
    """
    return cannot_read(exc) if isinstance(exc, PermissionError) else None
