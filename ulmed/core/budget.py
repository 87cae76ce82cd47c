"""Perturbation budgets given in [0, 1] units (``8/255``) or native units (``20HU``).

A budget is parsed once from the user's text and converted per record, because the
native size of one [0, 1] unit differs between records (an 8-bit PNG, a CT series).
An L2 budget carries the prefix ``l2:`` (``l2:0.5``, ``l2:40HU``); without a prefix (or
with ``linf:``) a budget is L-inf.

The default, ``auto`` (:data:`DEFAULT_BUDGET`), depends on the data kind: 8/255 of an image's
range at a PSNR of at least 38 dB against it; on a DICOM or NIfTI record, whose budget range is a
robust intensity range, a cap of 16/255 of that range together with a PSNR floor of 40 dB against it. A sparse
code (lsp's Nyquist code on a volume's labels) then takes the amplitude the PSNR allows, which patch-trained
3D victims learn where 8/255 has no effect; a dense perturbation is scaled down to the floor
(docs/results.md, issue 16). The floors are issue 16's imperceptibility targets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from ulmed.choices import look_up
from ulmed.core.tasks import Norm
from ulmed.errors import ConfigError
from ulmed.io.record import IntensityMapping, Record

_NATIVE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-z]+)\s*$")
_FRACTION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*/\s*([0-9]*\.?[0-9]+)\s*$")
_NUMBER = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*$")
_NORM = re.compile(r"^\s*(linf|l2)\s*:(.*)$", re.IGNORECASE)

#: The budget a run takes when none is given: per data kind (:meth:`Budget.auto`).
DEFAULT_BUDGET = "auto"
#: ``auto``'s L-inf budget on images (PNG, TIFF, arrays): 8 grey levels of 255.
AUTO_IMAGE_EPS = 8 / 255
#: ``auto``'s PSNR floor in dB on images, against their data range (issue 16's target for 2D).
AUTO_IMAGE_PSNR = 38.0
#: ``auto``'s L-inf cap on DICOM and NIfTI records, in units of their robust range.
AUTO_ROBUST_EPS = 16 / 255
#: ``auto``'s PSNR floor in dB on DICOM and NIfTI records, against their robust range (issue 16's
#: imperceptibility target for volumes).
AUTO_ROBUST_PSNR = 40.0


@dataclass(frozen=True)
class Budget:
    """An L-inf or L2 budget, in [0, 1] units or in a record's native unit.

    Args:
        value: Size of the budget in ``unit`` (the radius of the L-inf or L2 ball).
        native_unit: ``None`` for [0, 1] units; otherwise the native unit's name
            (``"HU"``, ``"value"``) or ``"native"`` to match any record's unit.
        spec: The text the user gave, kept for manifests.
        norm: ``"linf"`` (per-element bound) or ``"l2"`` (bound on the whole record's norm).
        robust_value: The [0, 1] budget on records whose budget range is a robust intensity
            range (DICOM, NIfTI); None: ``value`` for every record.
        robust_psnr: A floor in dB on those records' PSNR against their robust range: a
            perturbation whose root mean square exceeds ``10^(-psnr/20)`` of it is scaled down
            (:func:`psnr_share`). None: no floor.
        image_psnr: The same floor on every other record (images), against its data range.
    """

    value: float
    native_unit: str | None = None
    spec: str = ""
    norm: str = Norm.LINF.value
    robust_value: float | None = None
    robust_psnr: float | None = None
    image_psnr: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", look_up(self.norm, Norm, "budget norm").value)  # kept as plain text
        if not self.value > 0:
            raise ConfigError(f"budget must be > 0, got {self.spec or self.value!r}")
        if self.norm == Norm.LINF and self.native_unit is None and self.value > 1:
            raise ConfigError(f"budget {self.spec or self.value!r} exceeds the [0, 1] range; "
                              "write it as N/255 or with a unit such as 20HU")
        if self.robust_value is not None and not 0 < self.robust_value <= 1:
            raise ConfigError(f"the budget on robust ranges must be in (0, 1], got {self.robust_value!r}")
        for floor in (self.robust_psnr, self.image_psnr):
            if floor is not None and not 0 < floor < 200:
                raise ConfigError(f"a PSNR floor must be a number of dB in (0, 200), got {floor!r}")

    @classmethod
    def auto(cls) -> Budget:
        """The default budget: :data:`AUTO_IMAGE_EPS` on images at a PSNR of at least :data:`AUTO_IMAGE_PSNR`
        dB; on DICOM and NIfTI records :data:`AUTO_ROBUST_EPS` of the robust range, at a PSNR of at least
        :data:`AUTO_ROBUST_PSNR` dB against it."""
        return cls(AUTO_IMAGE_EPS, None, DEFAULT_BUDGET, Norm.LINF.value, AUTO_ROBUST_EPS, AUTO_ROBUST_PSNR,
                   AUTO_IMAGE_PSNR)

    @classmethod
    def parse(cls, spec: str | float) -> Budget:
        """Parse ``"auto"`` (:meth:`auto`), ``"8/255"``, ``"0.03"``, ``0.03``, ``"20HU"`` or ``"3native"``.

        Any of the text forms may carry a norm prefix: ``"l2:0.5"``, ``"l2:40HU"``,
        ``"linf:8/255"`` (L-inf is the default).

        Raises:
            ConfigError: The text is none of these forms.
        """
        if isinstance(spec, (int, float)):
            return cls(float(spec), None, str(spec))
        text = str(spec)
        if text.strip().lower() == DEFAULT_BUDGET:
            return cls.auto()
        norm = Norm.LINF.value
        body = text
        if m := _NORM.match(text):
            norm, body = m.group(1).lower(), m.group(2)
        if m := _FRACTION.match(body):
            num, den = float(m.group(1)), float(m.group(2))
            if den == 0:
                raise ConfigError(f"budget {text!r} divides by zero")
            return cls(num / den, None, text.strip(), norm)
        if m := _NUMBER.match(body):
            return cls(float(m.group(1)), None, text.strip(), norm)
        if m := _NATIVE.match(body):
            return cls(float(m.group(1)), m.group(2), text.strip(), norm)
        raise ConfigError(
            f"cannot read budget {text!r}; write it as 8/255, 0.03 or with a native unit such as 20HU "
            "(prefix l2: for an L2 budget, e.g. l2:0.5)"
        )

    @property
    def label(self) -> str:
        """The norm and the size as given, e.g. ``"Linf 8/255"`` or ``"L2 0.5"`` (DICOM DerivationDescription)."""
        if any(v is not None for v in (self.robust_value, self.robust_psnr, self.image_psnr)):
            return (f"Linf {_fraction(self.value)}{_at(self.image_psnr)}, "
                    f"DICOM/NIfTI {_fraction(self.robust_value or self.value)}{_at(self.robust_psnr)}")
        m = _NORM.match(self.spec)
        size = (m.group(2) if m else self.spec).strip() or f"{self.value:g}"
        return f"{'L2' if self.norm == Norm.L2 else 'Linf'} {size}"

    @staticmethod
    def on_robust_range(mapping: IntensityMapping) -> bool:
        """Whether ``mapping``'s budget range is a robust intensity range (DICOM and NIfTI records)."""
        return mapping.budget_range > 0

    def size(self, mapping: IntensityMapping) -> float:
        """The budget's value for a record with ``mapping`` (``robust_value`` on a robust range)."""
        if self.robust_value is not None and self.on_robust_range(mapping):
            return self.robust_value
        return self.value

    def psnr_floor(self, mapping: IntensityMapping) -> float | None:
        """The PSNR floor in dB for a record with ``mapping`` (None: none)."""
        return self.robust_psnr if self.on_robust_range(mapping) else self.image_psnr

    def in_unit(self, mapping: IntensityMapping) -> float:
        """The budget in [0, 1] units for a record with ``mapping``.

        Raises:
            ConfigError: The budget's native unit is not the record's.
        """
        if self.native_unit is None:
            return self.size(mapping) * mapping.budget_scale / mapping.scale
        if self.native_unit.lower() not in ("native", mapping.unit.lower()):
            raise ConfigError(
                f"budget {self.spec!r} is in {self.native_unit} but this data is in {mapping.unit}; "
                f"give it as N/255 or as N{mapping.unit}"
            )
        return mapping.native_to_unit_eps(self.value)

    def in_native(self, mapping: IntensityMapping) -> float:
        """The budget in the native unit of a record with ``mapping``: what the stored values keep.

        A native budget is its own value (``20HU`` is 20, not 20 / scale * scale); a [0, 1]
        budget that lands within float noise of a whole number of stored steps is that
        number of steps (``8/255`` of an 8-bit image is 8 levels, not 7.999...).

        Raises:
            ConfigError: The budget's native unit is not the record's.
        """
        eps = self.in_unit(mapping)
        if self.native_unit is not None:
            return self.value
        native = mapping.unit_to_native_eps(eps)
        if mapping.quantum > 0:
            whole = round(native / mapping.quantum) * mapping.quantum
            if whole > 0 and abs(native - whole) <= 1e-9 * native:
                return float(whole)
        return native

    def describe(self, mapping: IntensityMapping) -> dict[str, Any]:
        """Both forms of the budget for one record, for the manifest."""
        eps = self.in_unit(mapping)
        robust = self.on_robust_range(mapping)
        scale = {"scale": mapping.budget_basis, "scale_native": mapping.budget_scale} if robust else {}
        native = self.in_native(mapping)
        floor = self.psnr_floor(mapping)
        return {"eps_unit": eps, "eps_native": native, "native_unit": mapping.unit, "norm": self.norm, **scale,
                **({"psnr_floor": floor} if floor is not None else {})}

    def too_small(self, record: Record) -> str | None:
        """A warning when this budget cannot change any stored value of ``record``, else None.

        Stored values move by whole steps (:func:`ulmed.io.record.quantise_perturbation`),
        so a budget below the smallest step (0.1 HU on an integer CT, 1/1000 of an 8-bit
        image) leaves the written file identical to the input, in either norm.
        """
        step = float(np.min(record.steps))
        eps = self.in_native(record.mapping)
        if step <= 0 or eps >= step:
            return None
        unit = record.mapping.unit
        return (f"budget {self.spec or self.value} ({eps:g} {unit}) is smaller than one stored step ({step:g} {unit}): "
                "no stored value can change, the written file equals the input; raise the budget")


def psnr_share(delta: np.ndarray, psnr: float, budget_width: float) -> float:
    """The factor (at most 1) that brings ``delta``'s PSNR against ``budget_width`` up to ``psnr`` dB.

    Args:
        delta: The perturbation in [0, 1] units of the record's data range.
        psnr: The floor, in dB.
        budget_width: The budget range in the same units (1 for images; the robust range's share
            of the data range for a volume).
    """
    flat = np.ascontiguousarray(delta).reshape(-1)
    rms = float(np.sqrt(np.einsum("i,i->", flat, flat, dtype=np.float64) / flat.size)) if flat.size else 0.0
    allowed = budget_width * 10 ** (-psnr / 20)
    return 1.0 if rms <= allowed else allowed / rms


def _fraction(value: float) -> str:
    """``value`` as ``N/255`` where it is a whole number of 255ths, else as a number."""
    steps = value * 255
    return f"{round(steps)}/255" if abs(steps - round(steps)) < 1e-9 else f"{value:g}"


def _at(psnr: float | None) -> str:
    """`` at >= P dB`` for a PSNR floor, else nothing."""
    return f" at >= {psnr:g} dB" if psnr is not None else ""
