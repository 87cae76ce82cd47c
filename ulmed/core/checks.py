"""Argument checks shared by the validating constructors of :mod:`ulmed.core` (one message each)."""

from __future__ import annotations

from ulmed.errors import ConfigError


def check_count(name: str, value: object, minimum: int) -> int:
    """``value`` when it is an integer (not a bool) of at least ``minimum``.

    Args:
        name: The argument's name, for the message.
        value: What was given.
        minimum: The smallest valid value.

    Returns:
        ``value``.

    Raises:
        ConfigError: ``value`` is not an integer, is a bool, or is below ``minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value
