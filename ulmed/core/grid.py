"""The trainer's working grid, and the pre-image that puts a code on it.

A trainer rarely trains on the pixel grid a file was released on: a 2D segmentation
trainer resizes every image to its working size (``128 x 128``, stretched or letterboxed),
with an antialiasing kernel that averages a code made for the native grid away. A
:class:`WorkingGrid` names the grid(s) a protection is made for (``--grid size:128``), and
:func:`preimage` finds the native-size perturbation that the trainer's resize maps onto a
code drawn on the working grid, as fully as the L-inf budget allows: the resizes are linear, so
one backward pass through them (summed over the working sizes and over the resize kernels
trainers use, :data:`KERNELS`) gives, for every native position, how much of the codes it
carries, and the pre-image follows that in closed form.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ulmed.choices import StrEnum, look_up
from ulmed.errors import ConfigError

if TYPE_CHECKING:  # torch loads with resize/preimage only: a native grid needs neither
    import torch


class Fit(StrEnum):
    """How a trainer brings an image to its working size."""

    #: Scale to fit inside ``N x N`` keeping the aspect ratio, pad the rest (a letterbox).
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
#: slightly higher PSNR, in a tenth of the time; 0 (the sign of the adjoint) keeps 0.570 at 1.2 dB less.
PREIMAGE_QUANTILE = 0.3
#: torch threads of the pre-image's backward pass: its tensors are image-sized, too small to gain from a
#: second thread, and a second OpenMP thread that waits on a core the pipeline's writer or metrics
#: thread holds made ``ulmed protect`` on 100 HC18 images take 25.6 s instead of 12.9 s (with the PGD
#: pre-image of before); one thread also makes the result independent of the core count.
PREIMAGE_THREADS = 1


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

    def shapes_for(self, native: Sequence[int]) -> list[tuple[int, int]]:
        """The working shapes of the sizes that shrink the image; sizes at or above the native size are left out.

        A trainer that enlarges an image interpolates the native code without averaging it
        away, so only the shrinking sizes need a code of their own; an empty list means
        that the native grid serves every size.
        """
        shapes = [self.working_shape(native, n) for n in self.sizes]
        return [s for s in shapes if s[0] < int(native[0]) or s[1] < int(native[1])]


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
    codes ``c`` and the kernels ``R``, is ``<g, delta>`` with ``g = sum R^T c`` (one backward
    pass through the resizes). ``delta = eps * clip(g / tau, -1, 1)`` maximises
    ``<g, delta> - |delta|^2 * eps / (2 tau)`` over ``|delta| <= eps``: the positions whose
    ``|g|`` reaches ``tau`` take the full budget and the others move in proportion, and
    positions no resize reads (``g = 0``) stay as they are. ``tau`` is the ``quantile`` of
    ``|g|`` over the positions with ``g != 0``; 0 gives ``eps * sign(g)``, the largest
    projection the budget allows, at the most energy.

    Args:
        image: The native image ``(C, H, W)`` in [0, 1] (the valid range ``image + delta``
            must stay in).
        codes: Target perturbations on the working grids, ``(C, h, w)`` each, in [0, 1]
            units (usually ``+-eps`` and 0).
        eps: L-inf budget in [0, 1] units.
        kernels: Resize kernels the projection is summed over.
        quantile: Share of the moved positions that move by less than the full budget.

    Returns:
        ``(C, H, W)`` float32 perturbation, ``|delta| <= eps`` and ``image + delta`` in [0, 1].

    Raises:
        ConfigError: Shapes that do not match, no codes or no kernels, ``eps <= 0``, a
            quantile outside [0, 1).
    """
    from ulmed.core.device import threads

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
    with threads(PREIMAGE_THREADS):
        g = _adjoint(image.shape, codes, kinds)
    moved = np.abs(g[g != 0])
    if not moved.size:
        return np.zeros(image.shape, dtype=np.float32)
    tau = float(np.quantile(moved, quantile)) if quantile > 0 else 0.0
    delta = eps * (np.sign(g) if tau == 0 else np.clip(g / tau, -1.0, 1.0))
    x = np.asarray(image, dtype=np.float64)
    return (np.clip(x + delta, 0.0, 1.0) - x).astype(np.float32)


def _adjoint(shape: Sequence[int], codes: Sequence[np.ndarray], kinds: Sequence[Kernel]) -> np.ndarray:
    """``sum over codes and kernels of R^T code``, ``shape`` like the native image (float64, one backward pass)."""
    import torch

    delta = torch.zeros((1, *shape), dtype=torch.float64, requires_grad=True)
    total = sum((resize(delta, c.shape[-2:], k) * torch.from_numpy(np.asarray(c, dtype=np.float64))[None]).sum()
                for c in codes for k in kinds)
    (grad,) = torch.autograd.grad(total, delta)
    return grad[0].numpy()
