"""The trainer's working grid, and the pre-image that puts a code on it.

A trainer rarely trains on the pixel grid a file was released on: a 2D segmentation
trainer resizes every image to its working size (``128 x 128``, stretched or letterboxed),
with an antialiasing kernel that averages a code made for the native grid away. A
:class:`WorkingGrid` names the grid(s) a protection is made for (``--grid size:128``), and
:func:`preimage` finds the native-size perturbation that the trainer's resize maps onto a
code drawn on the working grid, as fully as the L-inf budget allows: the resizes are linear, so
the transposes of their sparse weight matrices (summed over the working sizes and over the
resize kernels trainers use, :data:`KERNELS`) give, for every native position, how much of the codes it
carries, and the pre-image follows that in closed form.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ulmed.choices import StrEnum, look_up
from ulmed.errors import ConfigError

if TYPE_CHECKING:  # torch loads with resize only (trainers' kernels, to measure): the pre-image needs none
    import torch
    from scipy import sparse


class Fit(StrEnum):
    """How a trainer brings an image to its working size."""

    #: Scale to fit inside ``N x N`` keeping the aspect ratio, pad the rest equally on both sides (a centred
    #: letterbox: albumentations ``LongestMaxSize`` + ``PadIfNeeded``, MONAI ``ResizeWithPadOrCrop``).
    LETTERBOX = "letterbox"
    #: Scale each axis to ``N`` (the aspect ratio changes).
    STRETCH = "stretch"


class Kernel(StrEnum):
    """Resize kernels of the trainers a pre-image is optimised against."""

    #: Antialiased bilinear: Pillow's ``resize(BILINEAR)``, torch/MONAI with ``antialias=True``.
    ANTIALIAS = "antialias"
    #: Box averaging: OpenCV / albumentations ``INTER_AREA``, torch ``mode="area"``.
    AREA = "area"
    #: Bilinear without antialiasing: OpenCV ``INTER_LINEAR``, torch's default.
    LINEAR = "linear"


#: The kernels :func:`preimage` sums the projection over by default: all of :class:`Kernel`.
KERNELS: tuple[Kernel, ...] = tuple(Kernel)
#: The pre-image's ``quantile``: with 0.3 it keeps what 10 steps of PGD on the squared error kept
#: (0.546 of the cell-2 code through an antialiased resize, benchmarks/grid_survival.py) at a
#: slightly higher PSNR, in a tenth of the time; 0 (the sign of ``g``) keeps 0.570 at 1.2 dB less.
PREIMAGE_QUANTILE = 0.3


@dataclass(frozen=True)
class WorkingGrid:
    """The grid(s) a protection is made for.

    Args:
        sizes: Working sizes ``N`` of a 2D trainer that resizes to ``N x N``; empty for the
            native grid (the code is drawn on the file's own pixels).
        fit: How the trainer fits an image into ``N x N`` (:class:`Fit`).
    """

    sizes: tuple[int, ...] = ()
    fit: Fit = Fit.LETTERBOX

    def __post_init__(self) -> None:
        if any(not isinstance(n, int) or n < 2 for n in self.sizes):
            raise ConfigError(f"working sizes must be integers >= 2, got {list(self.sizes)}")
        object.__setattr__(self, "fit", look_up(self.fit, Fit, "fit"))

    @classmethod
    def parse(cls, spec: str | WorkingGrid | None, fit: str | Fit = Fit.LETTERBOX) -> WorkingGrid:
        """``native`` or ``size:N[,M...]`` (the ``--grid`` option) as a grid.

        Raises:
            ConfigError: Any other text, or a size that is not an integer >= 2.
        """
        if isinstance(spec, WorkingGrid):
            return spec
        text = "native" if spec is None else str(spec).strip().lower()
        if text == "native":
            return cls((), fit)  # type: ignore[arg-type]
        kind, _, values = text.partition(":")
        if kind != "size" or not values:
            raise ConfigError(
                f"grid must be 'auto', 'native' or 'size:N[,M...]' (the trainer's working sizes), got {spec!r}"
            )
        try:
            sizes = tuple(sorted({int(v) for v in values.split(",") if v.strip()}))
        except ValueError:
            raise ConfigError(f"grid sizes must be integers, got {spec!r}") from None
        return cls(sizes, fit)  # type: ignore[arg-type]

    @property
    def is_native(self) -> bool:
        """True when the code is drawn on the file's own pixels."""
        return not self.sizes

    @property
    def spec(self) -> str:
        """The ``--grid`` text of this grid."""
        return "native" if self.is_native else "size:" + ",".join(str(n) for n in self.sizes)

    def working_shape(self, native: Sequence[int], size: int) -> tuple[int, int]:
        """The shape a ``native`` (H, W) image has after the trainer's resize to ``size`` (before any padding)."""
        h, w = int(native[0]), int(native[1])
        if self.fit is Fit.STRETCH:
            return size, size
        scale = min(size / h, size / w)
        return max(1, round(h * scale)), max(1, round(w * scale))

    def origin(self, shape: Sequence[int], size: int) -> tuple[int, int]:
        """Where a working ``shape`` (:meth:`working_shape`) starts in the trainer's ``size x size`` frame.

        A centred letterbox pads ``(size - h) // 2`` rows before the image (and as many columns), as
        albumentations' ``PadIfNeeded`` and MONAI's ``SpatialPad`` do; a stretched image fills the frame.
        """
        if self.fit is Fit.STRETCH:
            return 0, 0
        return (size - int(shape[0])) // 2, (size - int(shape[1])) // 2

    def placements(self, native: Sequence[int]) -> list[tuple[tuple[int, int], tuple[int, int]]]:
        """``(working shape, origin in the trainer's frame)`` of each size that shrinks the image.

        Sizes at or above the native size are left out: a trainer that enlarges an image
        interpolates the native code without averaging it away, so only the shrinking sizes
        need a code of their own; an empty list means that the native grid serves every size.
        """
        shapes = [(self.working_shape(native, n), n) for n in self.sizes]
        return [(s, self.origin(s, n)) for s, n in shapes if s[0] < int(native[0]) or s[1] < int(native[1])]

    def shapes_for(self, native: Sequence[int]) -> list[tuple[int, int]]:
        """The working shapes of :meth:`placements`."""
        return [shape for shape, _ in self.placements(native)]


def nearest_labels(labels: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """A 2D mask or label map resized to ``shape`` by nearest neighbour with Pillow, as trainers resize masks.

    Raises:
        ConfigError: Labels outside the 32-bit integer range.
    """
    arr = np.asarray(labels)
    if arr.dtype not in (np.uint8, np.uint16, np.int32):
        if arr.size and (arr.min() < np.iinfo(np.int32).min or arr.max() > np.iinfo(np.int32).max):
            raise ConfigError("label values must fit in 32-bit integers to be resized")
        arr = arr.astype(np.int32)
    image = Image.fromarray(np.ascontiguousarray(arr))
    out = np.asarray(image.resize((int(shape[1]), int(shape[0])), Image.Resampling.NEAREST))
    return out.astype(labels.dtype, copy=False)


def resize(x: torch.Tensor, shape: Sequence[int], kernel: Kernel | str) -> torch.Tensor:
    """Resize ``(B, C, H, W)`` to ``shape`` with one of the trainers' kernels (differentiable)."""
    import torch.nn.functional as F

    kind = look_up(kernel, Kernel, "resize kernel")
    size = (int(shape[0]), int(shape[1]))
    if kind is Kernel.AREA:
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=kind is Kernel.ANTIALIAS)


def preimage(
    image: np.ndarray,
    codes: Sequence[np.ndarray],
    eps: float,
    *,
    kernels: Sequence[Kernel | str] = KERNELS,
    quantile: float = PREIMAGE_QUANTILE,
) -> np.ndarray:
    """The native perturbation whose resize to each working grid carries as much of that grid's code as it can.

    The resizes are linear, so what a perturbation ``delta`` puts on the codes, summed over the
    codes ``c`` and the kernels ``R``, is ``<g, delta>`` with ``g = sum R^T c`` (:func:`adjoint`).
    ``delta = eps * clip(g / tau, -1, 1)`` maximises ``<g, delta> - |delta|^2 * eps / (2 tau)``
    over ``|delta| <= eps``: the positions whose ``|g|`` reaches ``tau`` take the full budget,
    the others move in proportion, and positions no resize reads (``g = 0``) stay as they are.
    ``tau`` is the ``quantile`` of ``|g|`` over the positions with ``g != 0``; 0 gives
    ``eps * sign(g)``, the largest projection the budget allows, at the most energy.

    Args:
        image: The native image ``(C, H, W)`` in [0, 1] (the valid range ``image + delta``
            must stay in).
        codes: Target perturbations on the working grids, ``(C, h, w)`` each, in [0, 1]
            units (usually ``+-eps`` and 0).
        eps: L-inf budget in [0, 1] units.
        kernels: Resize kernels the projection is summed over.
        quantile: Share of the moved positions that move by less than the full budget (those
            with the smallest ``|g|``).

    Returns:
        ``(C, H, W)`` float32 perturbation, ``|delta| <= eps`` and ``image + delta`` in [0, 1].

    Raises:
        ConfigError: Shapes that do not match, no codes or no kernels, ``eps <= 0``, a
            quantile outside [0, 1).
    """
    if image.ndim != 3 or not codes or not kernels:
        raise ConfigError(f"preimage needs a (C, H, W) image, at least one code and one kernel; got {image.shape}")
    if not eps > 0:
        raise ConfigError(f"preimage needs eps > 0, got {eps}")
    if not 0 <= quantile < 1:
        raise ConfigError(f"preimage needs a quantile in [0, 1), got {quantile}")
    for code in codes:
        if code.ndim != 3 or code.shape[0] != image.shape[0]:
            raise ConfigError(f"a code must be (C, h, w) with the image's {image.shape[0]} channels, got {code.shape}")
    kinds = [look_up(k, Kernel, "resize kernel") for k in kernels]
    g = np.zeros(image.shape, dtype=np.float64)
    for code in codes:
        for kind in kinds:
            g += adjoint(code, image.shape[1:], kind)
    return _scaled(g, image, eps, quantile)


def _scaled(g: np.ndarray, image: np.ndarray, eps: float, quantile: float) -> np.ndarray:
    """:func:`preimage`'s ``delta`` from ``g``, computed in ``g`` (a 12 MP image holds three float64 arrays)."""
    moved = np.abs(g[g != 0])
    if not moved.size:
        return g.astype(np.float32)
    tau = float(np.quantile(moved, quantile)) if quantile > 0 else 0.0
    del moved
    if tau == 0:
        np.sign(g, out=g)
    else:
        g /= tau
        np.clip(g, -1.0, 1.0, out=g)
    g *= eps
    x = np.asarray(image, dtype=np.float64)
    g += x  # then clipped to the valid range and the image taken away again
    np.clip(g, 0.0, 1.0, out=g)
    g -= x
    return g.astype(np.float32)


def adjoint(code: np.ndarray, native: Sequence[int], kernel: Kernel | str) -> np.ndarray:
    """``R^T code``: the transpose of :func:`resize` from ``native`` to the code's shape, applied to ``(C, h, w)``.

    The kernels are separable, ``resize(x) = A x B^T`` per channel with one sparse matrix per
    axis (:func:`axis_weights`), so the transpose is ``A^T code B`` (float64, ``(C, *native)``).
    Sparse products run on one thread: the result does not depend on the machine's cores.
    """
    rows = axis_weights(int(native[0]), int(code.shape[-2]), kernel)
    cols = axis_weights(int(native[1]), int(code.shape[-1]), kernel)
    return np.stack([(cols.T @ (rows.T @ np.asarray(c, dtype=np.float64)).T).T for c in code])


def axis_weights(n_in: int, n_out: int, kernel: Kernel | str) -> sparse.csr_matrix:
    """``(n_out, n_in)`` weights of one axis of :func:`resize` with ``kernel`` (torch's kernels, half-pixel centres).

    ``AREA`` averages input positions ``floor(i n_in / n_out)`` to ``ceil((i + 1) n_in / n_out)``
    (adaptive average pooling); ``LINEAR`` interpolates between the two neighbours of
    ``(i + 0.5) n_in / n_out - 0.5`` (clamped at the edges); ``ANTIALIAS`` weighs the inputs
    with a triangle that is ``max(n_in / n_out, 1)`` positions wide on each side of the output's
    centre, normalised (Pillow's bilinear filter, which torch's ``antialias=True`` follows).
    tests/core/test_grid.py checks each against ``torch.nn.functional.interpolate``. The matrices
    are cached by size and kernel: a data set's images mostly share a few sizes.
    """
    return _axis_weights(int(n_in), int(n_out), look_up(kernel, Kernel, "resize kernel"))


@functools.lru_cache(maxsize=64)
def _axis_weights(n_in: int, n_out: int, kernel: Kernel) -> sparse.csr_matrix:
    """:func:`axis_weights` for a :class:`Kernel` (the cache's key)."""
    from scipy import sparse

    scale = n_in / n_out
    out = np.arange(n_out)
    if kernel is Kernel.AREA:
        start, end = (out * n_in) // n_out, -((-(out + 1) * n_in) // n_out)
        idx = [np.arange(a, b) for a, b in zip(start, end)]
        val = [np.full(b - a, 1.0 / (b - a)) for a, b in zip(start, end)]
    elif kernel is Kernel.LINEAR:
        src = np.maximum((out + 0.5) * scale - 0.5, 0.0)
        low = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        frac = src - low
        idx = [np.array([a, min(a + 1, n_in - 1)]) for a in low]
        val = [np.array([1.0 - f, f]) for f in frac]
    else:
        width = max(scale, 1.0)
        centre = (out + 0.5) * scale
        idx, val = [], []
        for c in centre:
            taps = np.arange(max(int(c - width + 0.5), 0), min(int(c + width + 0.5), n_in))
            w = np.maximum(0.0, 1.0 - np.abs((taps - c + 0.5) / width))
            idx.append(taps)
            val.append(w / w.sum())
    row_of = np.concatenate([np.full(len(i), r) for r, i in enumerate(idx)])
    return sparse.csr_matrix((np.concatenate(val), (row_of, np.concatenate(idx))), shape=(n_out, n_in))
