"""String choices: one ``StrEnum`` per option and one lookup that names the valid values.

Every string option of ulmed (a norm, a task, a resize kernel, a DICOM encoding, ...) is a
:class:`StrEnum` (members are their values, as in MONAI's); :func:`look_up` turns user input into
a member through MONAI's ``look_up_option`` and raises a :class:`~ulmed.errors.ConfigError` that
lists the choices. MONAI is imported only for a value that is not a choice (for its message with
suggestions), so that the io layer and the training-free methods never load torch.
"""

from __future__ import annotations

from enum import Enum
from typing import TypeVar

from ulmed.errors import ConfigError

__all__ = ["StrEnum", "look_up", "names"]

E = TypeVar("E", bound=Enum)


class StrEnum(str, Enum):
    """A string enum whose members print and compare as their values (``Norm.L2 == "l2"``)."""

    def __str__(self) -> str:
        return str(self.value)

    def __repr__(self) -> str:
        return str(self.value)


def look_up(value: object, options: type[E], what: str) -> E:
    """``value`` as a member of the string enum ``options``, or a ConfigError naming the choices.

    Args:
        value: A member, or its value in any case (``"LINF"``, ``"linf"``).
        options: The enum class.
        what: The option's name for the message, e.g. ``"norm"``.

    Returns:
        The member.

    Raises:
        ConfigError: ``value`` is not one of the members' values.
    """
    text = str(getattr(value, "value", value)).lower()
    members = {str(o.value): o for o in options}
    if text in members:  # the common case needs no MONAI (and so no torch) import
        return members[text]
    from monai.utils import look_up_option

    try:
        return options(look_up_option(text, list(members)))
    except ValueError as exc:
        raise ConfigError(f"{what}: {' '.join(str(exc).split())}") from None


def names(options: type[Enum]) -> tuple[str, ...]:
    """The values of a string enum, in definition order (for help texts and manifests)."""
    return tuple(str(o.value) for o in options)
