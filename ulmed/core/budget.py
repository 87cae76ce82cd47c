"""Perturbation budgets given in [0, 1] units (``8/255``) or native units (``20HU``).

A budget is parsed once from the user's text and converted per record, because the
native size of one [0, 1] unit differs between records (an 8-bit PNG, a CT series).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ulmed.errors import ConfigError
from ulmed.io.record import IntensityMapping

_NATIVE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-z]+)\s*$")
_FRACTION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*/\s*([0-9]*\.?[0-9]+)\s*$")
_NUMBER = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*$")


@dataclass(frozen=True)
class Budget:
    """An L-inf budget, in [0, 1] units or in a record's native unit.

    Args:
        value: Size of the budget in ``unit``.
        native_unit: ``None`` for [0, 1] units; otherwise the native unit's name
            (``"HU"``, ``"value"``) or ``"native"`` to match any record's unit.
        spec: The text the user gave, kept for manifests.
    """

    value: float
    native_unit: str | None = None
    spec: str = ""

    def __post_init__(self) -> None:
        if not self.value > 0:
            raise ConfigError(f"budget must be > 0, got {self.spec or self.value!r}")
        if self.native_unit is None and self.value > 1:
            raise ConfigError(f"budget {self.spec or self.value!r} exceeds the [0, 1] range; write it as N/255 or with a unit such as 20HU")

    @classmethod
    def parse(cls, spec: str | float) -> Budget:
        """Parse ``"8/255"``, ``"0.03"``, ``0.03``, ``"20HU"`` or ``"3native"``.

        Raises:
            ConfigError: The text is none of these forms.
        """
        if isinstance(spec, (int, float)):
            return cls(float(spec), None, str(spec))
        text = str(spec)
        if m := _FRACTION.match(text):
            num, den = float(m.group(1)), float(m.group(2))
            if den == 0:
                raise ConfigError(f"budget {text!r} divides by zero")
            return cls(num / den, None, text.strip())
        if m := _NUMBER.match(text):
            return cls(float(m.group(1)), None, text.strip())
        if m := _NATIVE.match(text):
            return cls(float(m.group(1)), m.group(2), text.strip())
        raise ConfigError(f"cannot read budget {text!r}; write it as 8/255, 0.03 or with a native unit such as 20HU")

    def in_unit(self, mapping: IntensityMapping) -> float:
        """The budget in [0, 1] units for a record with ``mapping``.

        Raises:
            ConfigError: The budget's native unit is not the record's.
        """
        if self.native_unit is None:
            return self.value
        if self.native_unit.lower() not in ("native", mapping.unit.lower()):
            raise ConfigError(
                f"budget {self.spec!r} is in {self.native_unit} but this data is in {mapping.unit}; "
                f"give it as N/255 or as N{mapping.unit}"
            )
        return mapping.native_to_unit_eps(self.value)

    def describe(self, mapping: IntensityMapping) -> dict[str, Any]:
        """Both forms of the budget for one record, for the manifest."""
        eps = self.in_unit(mapping)
        return {"eps_unit": eps, "eps_native": mapping.unit_to_native_eps(eps), "native_unit": mapping.unit}
