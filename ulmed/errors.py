"""One exception family for everything ulmed raises on purpose.

Every message names the file (when there is one) and says what to do, because the
CLI prints exactly ``str(error)`` on one line.
"""

from __future__ import annotations

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
