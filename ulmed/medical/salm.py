"""SALM: sparsity-aware local masking (after Sun et al. 2024, "Medical Unlearnable Examples").

Medical images are sparse: much of the field of view is empty background. SALM spends the
budget only on the positions that matter most to the surrogate. The rule implemented here
(see docs/methods/salm.md for the reasons):

* candidate positions: every real position (``region="all"``), the body found by Otsu
  thresholding (``"body"``), or the target's foreground dilated by ``margin`` (``"target"``);
* saliency: ``|d loss / d delta|`` summed over channels and smoothed by a ``smooth``-wide
  box filter, so that the chosen positions form small connected patches rather than
  isolated pixels;
* every ``every`` PGD steps the top ``rho`` fraction of candidates by saliency is chosen;
  noise outside the chosen set is reset to zero, so at most ``rho`` of the candidates are
  ever non-zero (an L0 budget on top of L-inf).

Everything else — the surrogate, the min-min schedule, the projection — is the shared
core (:class:`ulmed.core.optimised.OptimisedMethod`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from skimage.filters import threshold_otsu

from ulmed.choices import StrEnum, look_up
from ulmed.core.bilevel import PositionPolicy
from ulmed.core.groups import Group
from ulmed.core.method import METHODS
from ulmed.core.optimised import OptimisedMethod
from ulmed.core.pgd import SelectFn
from ulmed.core.projection import l0_mask_topk
from ulmed.core.tasks import Task
from ulmed.errors import ConfigError


class Region(StrEnum):
    """Where SALM's candidate positions lie."""

    #: Every real (not padded) position.
    ALL = "all"
    #: The body found by Otsu thresholding (:func:`body_mask`).
    BODY = "body"
    #: The target's foreground, dilated by ``margin``.
    TARGET = "target"


#: The region values, in definition order.
REGIONS: tuple[str, ...] = tuple(r.value for r in Region)


def body_mask(unit_image: np.ndarray) -> np.ndarray:
    """Foreground of an image by Otsu's threshold on the channel mean, holes filled.

    Args:
        unit_image: ``(C, *spatial)`` in [0, 1].

    Returns:
        Boolean ``(1, *spatial)``; all True for a constant image.
    """
    grey = np.asarray(unit_image, dtype=np.float64).mean(axis=0)
    if np.ptp(grey) == 0:
        return np.ones((1, *grey.shape), dtype=bool)
    mask = ndimage.binary_fill_holes(grey > threshold_otsu(grey))
    return np.asarray(mask, dtype=bool)[None]


def _dilate(mask: torch.Tensor, margin: int) -> torch.Tensor:
    if margin <= 0:
        return mask
    pool = F.max_pool2d if mask.dim() == 4 else F.max_pool3d
    return pool(mask.float(), kernel_size=2 * margin + 1, stride=1, padding=margin) > 0


class SaliencyPolicy:
    """The SALM position policy for :func:`ulmed.core.bilevel.min_min`.

    Args:
        allowed: Candidate positions ``(N, 1, *spatial)`` (bool), one row per data item.
        rho: Fraction of candidates that may be non-zero.
        every: Re-choose the positions every this many PGD steps.
        smooth: Width of the box filter on the saliency (1 = none).
    """

    def __init__(self, allowed: torch.Tensor, rho: float, every: int, smooth: int) -> None:
        self.allowed = allowed
        self.rho = rho
        self.every = every
        self.smooth = smooth

    def saliency(self, grad: torch.Tensor) -> torch.Tensor:
        """``|grad|`` summed over channels, box-smoothed: ``(B, 1, *spatial)``."""
        score = grad.abs().sum(1, keepdim=True)
        if self.smooth > 1:
            pool = F.avg_pool2d if score.dim() == 4 else F.avg_pool3d
            score = pool(score, kernel_size=self.smooth, stride=1, padding=self.smooth // 2, count_include_pad=False)
        return score

    def __call__(self, indices: torch.Tensor, x: torch.Tensor | None) -> tuple[torch.Tensor | None, SelectFn | None]:
        """Mask and selector for the PGD batch ``indices``."""
        if x is None:
            raise ConfigError("SALM chooses positions per image; class-wise noise is not supported")
        allowed = self.allowed[indices.to(self.allowed.device)].to(x.device)

        def select(step: int, grad: torch.Tensor, delta: torch.Tensor) -> torch.Tensor | None:
            if step % self.every:
                return None
            return l0_mask_topk(self.saliency(grad), self.rho, allowed)

        return allowed, select


@METHODS.register("salm")
class SALM(OptimisedMethod):
    """Sparsity-aware local masking: error-minimising noise on the top-rho salient positions only.

    Args:
        rho: Fraction of candidate positions that may change (L0 budget), in (0, 1].
        every: Re-choose the positions every this many PGD steps.
        region: ``all``, ``body`` (Otsu foreground) or ``target`` (mask foreground + margin).
        margin: Dilation of the target foreground for ``region="target"``, in positions.
        smooth: Box-filter width of the saliency.
        **kwargs: The min-min settings of :class:`ulmed.core.optimised.OptimisedMethod`.
    """

    name = "salm"
    citation = (
        'Sun et al., "Medical Unlearnable Examples: Securing Medical Data from Unauthorized Training '
        'via Sparsity-Aware Local Masking", 2024 (selection rule: docs/methods/salm.md)'
    )
    regions: ClassVar[tuple[str, ...]] = REGIONS

    def __init__(self, *args: Any, rho: float = 0.1, every: int = 5, region: str = "all", margin: int = 5,
                 smooth: int = 3, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not 0.0 < rho <= 1.0:
            raise ConfigError(f"rho must lie in (0, 1], got {rho}")
        if every < 1 or smooth < 1 or smooth % 2 == 0 or margin < 0:
            raise ConfigError(f"need every >= 1, an odd smooth >= 1 and margin >= 0; got {every}, {smooth}, {margin}")
        if self.classwise:
            raise ConfigError("SALM chooses positions per image; class-wise noise is not supported")
        self.rho, self.every, self.margin, self.smooth = rho, every, margin, smooth
        self.region = look_up(region, Region, "region")

    def candidates(self, group: Group) -> torch.Tensor:
        """Candidate positions of every row of the group, ``(N, 1, *spatial)`` bool."""
        allowed = group.valid.clone()
        if self.region is Region.BODY:
            body = np.stack([body_mask(img) for img in group.images.numpy()])
            allowed &= torch.as_tensor(body)
        elif self.region is Region.TARGET:
            if group.targets_info.task != Task.SEGMENTATION:
                raise ConfigError("region='target' needs masks or label maps")
            allowed &= _dilate(group.targets > 0, self.margin)
        return allowed

    def position_policy(self, group: Group) -> PositionPolicy:
        """SALM's policy: top-rho smoothed saliency among the candidates."""
        return SaliencyPolicy(self.candidates(group), self.rho, self.every, self.smooth)

    def params(self) -> dict[str, Any]:
        """Parameters that define the output."""
        return {**super().params(), "rho": self.rho, "every": self.every, "region": self.region,
                "margin": self.margin, "smooth": self.smooth}
