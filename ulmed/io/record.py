"""The one in-memory record type for a 2D image or a 3D volume, and its intensity mapping.

Layout contract (every reader produces it, every method and writer relies on it):

* ``Record.image`` is the *native* array, channel-first: ``(C, H, W)`` for a 2D image and
  ``(C, D, H, W)`` for a volume. C is 1 for grey, 3 for RGB, T for a 4D NIfTI (volumes in
  time become channels). Native means the values the user thinks in: Hounsfield units
  for CT (stored value x RescaleSlope + RescaleIntercept), 8/16-bit values for PNG/TIFF,
  the scaled data of a NIfTI file.
* ``Record.target`` is ``None``, an ``int`` class label, or an integer array with the
  record's spatial shape (no channel axis): a mask or label map. Targets are never perturbed.
* ``Record.mapping`` maps native values to [0, 1] for the methods and back, and knows the
  valid native range and the size of one quantisation step of the file format.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ulmed.errors import ConfigError, InputError
from ulmed.io.percentile import percentiles, robust_sample
from ulmed.io.quantise import quantise_perturbation

__all__ = ["ROBUST_PERCENTILES", "IntensityMapping", "Record", "quantise_perturbation"]

#: Percentiles whose range is a volume's budget range (:meth:`IntensityMapping.for_data`).
ROBUST_PERCENTILES = (0.5, 99.5)
#: Values per piece when an elementwise step runs piece by piece (256 KB of float64): its float64
#: temporaries stay in the CPU's L2 cache and no volume-sized one is made (the same values as whole).
#: A 25 x 512 x 512 series is perturbed ~1.2x faster in pieces of 2^15 values than of one slice (2^18);
#: the metrics' pieces (:mod:`ulmed.eval.imperceptibility`) are this size too.
PIECE_VALUES = 1 << 15
#: Below this share of non-zero values in a perturbation (lsp's code on a labelled volume moves a few
#: percent of its voxels), :meth:`Record.with_perturbation` computes only the moved positions: a zero
#: change keeps a value inside the mapping's range exactly, so the result is the same.
SPARSE_SHARE = 0.25


@dataclass(frozen=True)
class IntensityMapping:
    """Linear map between native values and the [0, 1] space that methods work in.

    ``low`` maps to 0 and ``high`` to 1. Readers choose ``low``/``high`` so that every
    value of the record lies inside them (the data range clipped to the valid range, or
    the full 8/16-bit range for images), which makes clipping to [0, 1] in method space
    also a clip to the valid native range.

    Args:
        low: Native value that maps to 0.
        high: Native value that maps to 1 (must be greater than ``low``).
        valid_min: Smallest native value the format can store.
        valid_max: Largest native value the format can store.
        quantum: Native size of one stored step (RescaleSlope, scl_slope, 1 for integer
            images); 0 for floating-point storage.
        unit: Name of the native unit, e.g. ``"HU"`` or ``"value"``; used in budgets
            such as ``20HU`` and in manifests.
        budget_range: Native width that a [0, 1] budget of 1 stands for (``8/255`` is 8/255
            of it) and that PSNR is taken against; 0: the mapping's own ``high - low``.
            Volume readers set the robust range of the data (:meth:`for_data` with
            ``robust=True``), so that one bright voxel does not widen the budget.
        budget_basis: What ``budget_range`` is, for manifests (``"p0.5-p99.5"``); empty for
            the mapping's range.
    """

    low: float
    high: float
    valid_min: float
    valid_max: float
    quantum: float = 1.0
    unit: str = "value"
    budget_range: float = 0.0
    budget_basis: str = ""

    def __post_init__(self) -> None:
        values = (self.low, self.high, self.valid_min, self.valid_max, self.quantum)
        if not all(math.isfinite(v) for v in values):
            raise ConfigError(f"intensity mapping needs finite numbers, got {values}")
        if not self.high > self.low:
            raise ConfigError(f"intensity mapping needs high > low, got low={self.low}, high={self.high}")
        if self.valid_min > self.low or self.valid_max < self.high:
            raise ConfigError(
                f"mapping range [{self.low}, {self.high}] lies outside the valid range "
                f"[{self.valid_min}, {self.valid_max}]"
            )
        if self.quantum < 0:
            raise ConfigError(f"quantum must be >= 0, got {self.quantum}")
        if not 0 <= self.budget_range <= self.high - self.low or not math.isfinite(self.budget_range):
            raise ConfigError(f"budget_range must lie in [0, high - low], got {self.budget_range}")

    @property
    def scale(self) -> float:
        """Native units per unit of [0, 1] space."""
        return self.high - self.low

    def to_unit(self, native: np.ndarray, dtype: type[np.floating] = np.float32) -> np.ndarray:
        """Map a native array to [0, 1] space (values outside are not clipped).

        Args:
            native: Native values.
            dtype: Float type of the result: float32 for methods, float64 for metrics
                that must match the stored values exactly.
        """
        native = np.asarray(native)
        if native.size <= PIECE_VALUES:
            return ((np.asarray(native, dtype=np.float64) - self.low) / self.scale).astype(dtype, copy=False)
        out = np.empty(native.shape, dtype=dtype)
        flat, into = native.reshape(-1), out.reshape(-1)  # piece by piece, the same operations
        for lo in range(0, flat.size, PIECE_VALUES):
            piece = np.subtract(flat[lo : lo + PIECE_VALUES], self.low, dtype=np.float64)
            piece /= self.scale
            into[lo : lo + PIECE_VALUES] = piece
        return out

    def to_native(self, unit: np.ndarray) -> np.ndarray:
        """Map [0, 1] values back to native float64 values, clipped to the valid range."""
        native = np.asarray(unit, dtype=np.float64) * self.scale + self.low
        return np.clip(native, self.valid_min, self.valid_max)

    @property
    def budget_scale(self) -> float:
        """Native units that a [0, 1] budget of 1 stands for (``budget_range``, or ``scale``)."""
        return self.budget_range if self.budget_range > 0 else self.scale

    def native_to_unit_eps(self, eps_native: float) -> float:
        """Convert a budget in native units (e.g. 20 HU) to [0, 1] units."""
        return float(eps_native) / self.scale

    def unit_to_native_eps(self, eps_unit: float) -> float:
        """Convert a budget in [0, 1] units (e.g. 8/255) to native units."""
        return float(eps_unit) * self.scale

    @classmethod
    def for_data(
        cls,
        data: np.ndarray,
        valid_min: float,
        valid_max: float,
        quantum: float,
        unit: str = "value",
        robust: bool = False,
    ) -> IntensityMapping:
        """Mapping spanning the data's own range, clipped to the valid range.

        A constant array gets a range one quantum (or 1.0 for floats) wide, so the map stays
        invertible. With ``robust``, the budget's range is the 0.5-99.5 percentile range of
        the data (:func:`~ulmed.io.percentile.robust_sample`: at most about 2^20 values), at least one quantum.
        """
        finite = np.asarray(data)
        lo = float(max(valid_min, finite.min())) if finite.size else float(valid_min)
        hi = float(min(valid_max, finite.max())) if finite.size else float(valid_max)
        if hi <= lo:
            width = quantum if quantum > 0 else 1.0
            if lo + width <= valid_max:
                hi = lo + width
            else:
                lo = hi - width
        mapping = cls(low=lo, high=hi, valid_min=float(valid_min), valid_max=float(valid_max), quantum=float(quantum),
                      unit=unit)
        if not robust or not finite.size:
            return mapping
        p_lo, p_hi = percentiles(robust_sample(finite), ROBUST_PERCENTILES)
        width = min(max(p_hi - p_lo, quantum if quantum > 0 else 0.0), hi - lo)
        if width <= 0:
            return mapping
        basis = f"p{ROBUST_PERCENTILES[0]:g}-p{ROBUST_PERCENTILES[1]:g}"
        return dataclasses.replace(mapping, budget_range=width, budget_basis=basis)

    def as_dict(self) -> dict[str, Any]:
        """Plain-dict form for manifests."""
        return {
            "low": self.low,
            "high": self.high,
            "valid_min": self.valid_min,
            "valid_max": self.valid_max,
            "quantum": self.quantum,
            "unit": self.unit,
            **({"budget_range": self.budget_range, "budget_basis": self.budget_basis} if self.budget_range > 0 else {}),
        }


@dataclass
class Record:
    """A 2D image or 3D volume with its optional target, ready for a method.

    Args:
        key: Stable identifier, the input's relative path (a series folder + UID for
            DICOM); used for output naming and in the manifest.
        image: Native array, channel-first (see module docstring).
        mapping: Intensity mapping of ``image``.
        spatial_dims: 2 or 3.
        kind: ``"dicom"``, ``"nifti"`` or ``"image"``; selects the writer.
        target: None, an int class label or an integer mask/label map of the spatial shape.
        handle: Whatever the writer needs to write this record back (datasets, header, mode).
        meta: Non-identifying description for ``ulmed info`` and manifests (shape, spacing,
            modality, dtype, ...). Never patient names, IDs or dates.
        quantum_map: Native size of one stored step per position, broadcastable to
            ``image``, where it differs between slices (a DICOM series with one RescaleSlope
            per slice); None: ``mapping.quantum`` everywhere.
    """

    key: str
    image: np.ndarray
    mapping: IntensityMapping
    spatial_dims: int
    kind: str
    target: np.ndarray | int | None = None
    handle: Any = None
    meta: dict[str, Any] = field(default_factory=dict)
    quantum_map: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.spatial_dims not in (2, 3):
            raise ConfigError(f"{self.key}: spatial_dims must be 2 or 3, got {self.spatial_dims}")
        if self.image.ndim != self.spatial_dims + 1:
            raise ConfigError(
                f"{self.key}: image must be channel-first with {self.spatial_dims} spatial axes, "
                f"got shape {self.image.shape}"
            )
        if np.issubdtype(self.image.dtype, np.floating) and not np.isfinite(self.image).all():
            raise InputError("contains NaN or Inf values; fix or remove the file before protecting it", self.key)
        if isinstance(self.target, np.ndarray) and self.target.shape != self.spatial_shape:
            raise InputError(
                f"mask/label shape {self.target.shape} does not match the image's {self.spatial_shape}; "
                "check that the mask belongs to this image",
                self.key,
            )
        if self.quantum_map is not None:
            q = np.asarray(self.quantum_map, dtype=np.float64)
            try:
                fits = np.broadcast_shapes(q.shape, self.image.shape) == self.image.shape
            except ValueError:
                fits = False
            if not fits:
                shapes = f"quantum_map of shape {q.shape} does not fit the image's {self.image.shape}"
                raise ConfigError(f"{self.key}: {shapes}")
            if not (np.isfinite(q).all() and (q > 0).all()):
                raise ConfigError(f"{self.key}: quantum_map needs finite steps > 0")

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Shape without the channel axis."""
        return tuple(self.image.shape[1:])

    @property
    def channels(self) -> int:
        """Number of channels (1 grey, 3 RGB, T for 4D NIfTI)."""
        return int(self.image.shape[0])

    def unit_image(self, dtype: type[np.floating] = np.float32) -> np.ndarray:
        """The image in [0, 1] space (float32; float64 for metrics of the stored values)."""
        return self.mapping.to_unit(self.image, dtype)

    @property
    def steps(self) -> float | np.ndarray:
        """Native size of one stored step: ``quantum_map`` where given, else ``mapping.quantum``."""
        return self.mapping.quantum if self.quantum_map is None else self.quantum_map

    def with_perturbation(self, delta: np.ndarray, eps_native: float | None = None, norm: str = "linf",
                          clip: float | None = None, toward_zero: bool = False) -> Record:
        """A copy of this record with ``delta`` (in [0, 1] units) added to its image, as stored.

        The perturbed image is clipped to [0, 1] in method space (so the native result stays
        inside the mapping's range and the valid range); the effective change is quantised
        to whole stored steps by :func:`~ulmed.io.quantise.quantise_perturbation`, within ``eps_native``, and
        added to the native image in float64. So a zero perturbation returns the native
        values exactly, the writers' rounding changes nothing, and metrics taken on the
        result are those of the written file. Under an L-inf budget (or none) every step is
        elementwise, so it runs box by box (:func:`slabs`, about :data:`PIECE_VALUES` values
        at a time): the same values, without volume-sized float64 temporaries. The result
        is int32 where whole integer steps keep every value exact (:meth:`_exact_dtype`: a
        16-bit DICOM series, a PNG), else float64.

        Args:
            delta: Perturbation in [0, 1] units, shaped like the image (not modified).
            eps_native: The budget in native units that quantisation must keep (None: round
                to the nearest stored step).
            norm: ``"linf"`` or ``"l2"``: the norm ``eps_native`` bounds.
            clip: Clip ``delta`` to ``[-clip, clip]`` (in float64) first: an L-inf budget in
                [0, 1] units (:meth:`ulmed.core.method.ProtectionMethod.apply`).
            toward_zero: Round each change toward zero (a PSNR floor then holds on the stored values).
        """
        if delta.shape != self.image.shape:
            raise ConfigError(f"{self.key}: perturbation shape {delta.shape} != image shape {self.image.shape}")
        dtype = self._exact_dtype()
        how = (eps_native, norm, clip, toward_zero)  # the same quantisation for the whole image or a part
        if norm != "linf" or self.image.ndim < 2:
            native = self._perturbed(self.image, delta, self.steps, *how).astype(dtype, copy=False)
        elif (moved := self._sparse(delta)) is not None:
            native = self.image.astype(dtype)  # a zero change keeps each value exactly: only the moved ones computed
            at = np.unravel_index(moved, self.image.shape)
            steps = self.steps if np.ndim(self.steps) == 0 else np.broadcast_to(
                _along_rows(self.steps, self.image.ndim), self.image.shape)[at]
            native[at] = self._perturbed(self.image[at], delta[at], steps, *how)
        else:
            native = np.empty(self.image.shape, dtype=dtype)
            steps = _along_rows(self.steps, self.image.ndim)
            for part in slabs(self.image.shape, PIECE_VALUES):
                step = steps if np.ndim(steps) == 0 else steps[_cut(part, steps.shape)]
                native[part] = self._perturbed(self.image[part], delta[part], step, *how)
        return dataclasses.replace(self, image=native, meta=dict(self.meta))

    def _sparse(self, delta: np.ndarray) -> np.ndarray | None:
        """The flat indices where ``delta`` is non-zero, when they are few (:data:`SPARSE_SHARE`) and the
        image lies inside the mapping's range (where a zero change is exact); else None."""
        if np.count_nonzero(delta) > SPARSE_SHARE * delta.size:
            return None
        inside = self.mapping.low <= float(self.image.min()) and float(self.image.max()) <= self.mapping.high
        return np.flatnonzero(delta) if inside else None

    def _exact_dtype(self) -> np.dtype:
        """int32 when the image is integer, every stored step a whole number and the clip bounds inside
        int32 (so ``clean + whole steps`` is an exact integer there), else float64.

        A writer then stores the values as they are (the DICOM writer's integer path) and the result
        takes half the memory of float64. int32, not the image's own dtype: ``protected - clean``
        in a user's script must not wrap around as uint8 or uint16 would.
        """
        if self.image.dtype.kind not in "iu":
            return np.dtype(np.float64)
        steps = np.asarray(self.steps, dtype=np.float64)
        info = np.iinfo(np.int32)
        low, high = max(self.mapping.low, self.mapping.valid_min), min(self.mapping.high, self.mapping.valid_max)
        whole = bool(np.all(steps > 0) and np.all(steps == np.round(steps)))
        return np.dtype(np.int32) if whole and info.min <= low and high <= info.max else np.dtype(np.float64)

    def _perturbed(self, image: np.ndarray, delta: np.ndarray, steps: float | np.ndarray, eps_native: float | None,
                   norm: str, clip: float | None, toward_zero: bool = False) -> np.ndarray:
        """Native ``image + delta`` as stored (:meth:`with_perturbation`), for the whole image or one slab."""
        base = np.asarray(image, dtype=np.float64)  # read only: no copy when the image is float64
        d = np.array(delta, dtype=np.float64)  # our own copy: clipped in place, the caller's array untouched
        if clip is not None:
            np.clip(d, -clip, clip, out=d)
        unit = base - self.mapping.low  # float64: no rounding slack; temporaries updated in place
        unit /= self.mapping.scale
        effective = unit + d
        del d
        np.clip(effective, 0.0, 1.0, out=effective)
        effective -= unit
        del unit
        effective *= self.mapping.scale
        bounds = (max(self.mapping.low, self.mapping.valid_min), min(self.mapping.high, self.mapping.valid_max))
        native = quantise_perturbation(image, effective, steps, eps=eps_native, norm=norm, bounds=bounds,
                                       toward_zero=toward_zero)
        del effective
        native += base
        return native


def slabs(shape: tuple[int, ...], values: int) -> list[tuple[slice, ...]]:
    """Boxes that tile a channel-first array of ``shape``, each of at most ``values`` values where it can be.

    Every box holds all channels and whole rows of the last axes: the first spatial axis whose
    trailing block (channels times the axes after it) fits in ``values`` is cut into runs of as
    many of its rows as fit, one box per index of the axes before it. An elementwise step run box
    by box gives the values it gives on the whole array, with temporaries that stay in the cache.

    Args:
        shape: The array's shape, ``(C, *spatial)``.
        values: The most values a box should hold (it holds at least one position, all its channels).

    Returns:
        The boxes, as index tuples, in C order.
    """
    if len(shape) < 2:
        return [tuple(slice(None) for _ in shape)]
    block, axis = shape[0], len(shape) - 1
    while axis > 1 and block * shape[axis] <= values:  # the trailing block of `axis - 1` fits
        block *= shape[axis]
        axis -= 1
    rows = max(1, values // max(block, 1))
    boxes: list[tuple[slice, ...]] = []
    for lead in np.ndindex(*shape[1:axis]):
        head = (slice(None), *(slice(i, i + 1) for i in lead))
        boxes.extend((*head, slice(lo, lo + rows)) for lo in range(0, shape[axis], rows))
    return boxes


def _cut(box: tuple[slice, ...], shape: tuple[int, ...]) -> tuple[slice, ...]:
    """``box`` for an array of ``shape`` that broadcasts against the boxed one (its axes of size 1 kept whole)."""
    return tuple(slice(None) if n == 1 else part for part, n in zip(box, shape))


def _along_rows(steps: float | np.ndarray, ndim: int) -> float | np.ndarray:
    """Stored steps as a number, or as an array of ``ndim`` axes (so that a slab of rows can be cut from it)."""
    if np.ndim(steps) == 0:
        return steps
    steps = np.asarray(steps, dtype=np.float64)
    return steps.reshape((1,) * (ndim - steps.ndim) + steps.shape)
