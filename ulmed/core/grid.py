"""The trainer's working grid, and the pre-image that puts a code on it.

A trainer rarely trains on the pixel grid a file was released on: a 2D segmentation
trainer resizes every image to its working size (``128 x 128``, stretched or letterboxed),
with an antialiasing kernel that averages a code made for the native grid away. A
:class:`WorkingGrid` names the grid(s) a protection is made for (``--grid size:128``), and
:func:`preimage` finds the native-size perturbation that the trainer's resize maps onto a
code drawn on the working grid, as closely as the L-inf budget allows: projected gradient
descent (the one PGD loop, :func:`ulmed.core.pgd.perturb`) on the squared error between
the resized perturbation and the code, summed over the working sizes and over the resize
kernels trainers use (:data:`KERNELS`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ulmed.choices import StrEnum, look_up
from ulmed.errors import ConfigError

if TYPE_CHECKING:  # torch and the PGD loop load with resize/preimage only: a native grid needs neither
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


#: The kernels :func:`preimage` optimises against by default: all of :class:`Kernel`.
KERNELS: tuple[Kernel, ...] = tuple(Kernel)
#: torch threads of the pre-image's PGD: its tensors are image-sized, too small to gain from a
#: second thread, and a second OpenMP thread that waits on a core the pipeline's writer or metrics
#: thread holds made ``ulmed protect`` on 100 HC18 images take 25.6 s instead of 12.9 s.
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


def _dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """``(B, 1, H, W)`` boolean mask grown by a square of side ``2 * radius + 1`` (a max filter, row then column)."""
    import torch.nn.functional as F

    k = 2 * radius + 1
    grown = F.max_pool2d(mask.float(), (1, k), stride=1, padding=(0, radius))
    return F.max_pool2d(grown, (k, 1), stride=1, padding=(radius, 0)) > 0


def preimage(
    image: np.ndarray,
    codes: Sequence[np.ndarray],
    eps: float,
    *,
    kernels: Sequence[Kernel | str] = KERNELS,
    n_steps: int = 20,
) -> np.ndarray:
    """The native perturbation whose resize to each code's shape comes closest to that code.

    Args:
        image: The native image ``(C, H, W)`` in [0, 1] (the valid range ``image + delta``
            must stay in).
        codes: Target perturbations on the working grids, ``(C, h, w)`` each, in [0, 1]
            units (usually ``+-eps`` and 0).
        eps: L-inf budget in [0, 1] units.
        kernels: Resize kernels the squared error is summed over.
        n_steps: PGD steps (sign steps with a decaying schedule, from the nearest-neighbour
            upsampled copy of the first code); only positions within one working-grid pixel
            of a coded position move, so the rest of the image stays as it is.

    Returns:
        ``(C, H, W)`` float32 perturbation, ``|delta| <= eps`` and ``image + delta`` in [0, 1].

    Raises:
        ConfigError: Shapes that do not match, no codes or no kernels, ``eps <= 0``.
    """
    import torch

    from ulmed.core.device import threads

    if image.ndim != 3 or not codes or not kernels:
        raise ConfigError(f"preimage needs a (C, H, W) image, at least one code and one kernel; got {image.shape}")
    if not eps > 0:
        raise ConfigError(f"preimage needs eps > 0, got {eps}")
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    targets = []
    for code in codes:
        if code.ndim != 3 or code.shape[0] != image.shape[0]:
            raise ConfigError(f"a code must be (C, h, w) with the image's {image.shape[0]} channels, got {code.shape}")
        targets.append(torch.from_numpy(np.ascontiguousarray(code, dtype=np.float32))[None])
    kinds = [look_up(k, Kernel, "resize kernel") for k in kernels]
    with threads(PREIMAGE_THREADS):
        return _descend(x, targets, kinds, eps, n_steps)[0].numpy()


def _descend(x: torch.Tensor, targets: list[torch.Tensor], kinds: list[Kernel], eps: float,
             n_steps: int) -> torch.Tensor:
    """The PGD of :func:`preimage` on ``(1, C, H, W)`` tensors: the perturbation, shaped like ``x``."""
    import torch.nn.functional as F

    from ulmed.core.pgd import LOOP_STEP_DIVISOR, PGDConfig, Schedule, default_step, perturb, step_schedule

    weight = 1.0 / (len(targets) * len(kinds))
    native = tuple(x.shape[2:])

    def loss_fn(x_adv: torch.Tensor) -> torch.Tensor:
        delta = x_adv - x
        return weight * sum(((resize(delta, t.shape[-2:], k) - t) ** 2).sum() for t in targets for k in kinds)

    start = F.interpolate(targets[0], size=native, mode="nearest").clamp(-eps, eps)
    # Only positions within one working-grid pixel of the code may move: sign steps would
    # otherwise put noise on every background pixel that a resize maps to zero.
    reach = max(math.ceil(native[a] / t.shape[-2 + a]) for t in targets for a in (0, 1))
    coded = sum(F.interpolate(t.abs(), size=native, mode="nearest") for t in targets)
    support = _dilate(coded.amax(dim=1, keepdim=True) > 0, reach)
    steps = step_schedule(Schedule.DYNAMIC, default_step(eps, LOOP_STEP_DIVISOR), max(n_steps, 1))
    return perturb(x, start, loss_fn, PGDConfig(eps, steps, n_steps, minimize=True), position_mask=support)
