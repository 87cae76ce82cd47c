"""Differentiable augmentation for augmentation-aware optimisation (expectation over transformations).

A trainer who augments its data sees ``T(x + delta)`` for random transformations ``T``,
never ``x + delta`` itself. Noise optimised only at the identity learns features that
the trainer's flips, warps and jitter destroy. With an :class:`AugmentPolicy` the bilevel
loop (:mod:`ulmed.core.bilevel`) lets both the surrogate's training steps and the PGD steps
see ``T(x + delta)`` with fresh random ``T`` at each step, so the noise is optimised for the
expectation over the policy (EOT).

What a trainer does is defined once per spatial dimension in :mod:`ulmed.core.augment_policy`
(presets ``none``, ``flip_jitter``, ``standard`` = the evaluation's ``augmentation`` defense,
``robust``); this module is the differentiable executor of those definitions, the
evaluation's :mod:`ulmed.eval.augmenter` the other one. Flips, 90-degree rotations, integer
shifts, the elastic field and brightness/contrast/noise are torch steps of
:mod:`ulmed.core.augment_ops`; the affine warp (rotation, per-axis scale, translation),
gamma and blur are kornia's; JPEG is kornia's differentiable codec (grey images pass as
R = G = B, then back to grey). All are differentiable in the image, so the gradient reaches
``delta`` through each one.

The ``nnunet`` preset (nnU-Net v2's augmentation) runs :class:`~ulmed.core.augment_nnunet.NnUNetStep`,
the torch steps that the evaluation's executor runs too, sample by sample.

Masks move with the image (nearest neighbour). For kornia's 3D affine, which has no mask
path, the label map is one-hot encoded, warped with the image and turned back by argmax.
Class labels (classification) are not transformed. Randomness is torch's global generator,
which :func:`ulmed.core.bilevel.min_min` seeds, so a seeded run is reproducible.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import kornia.augmentation as K
import torch
from torch import nn

from ulmed.core.augment_nnunet import NnUNetStep
from ulmed.core.augment_ops import (
    BrightnessContrast,
    Elastic,
    Flip,
    GreyJPEG,
    Noise,
    Pair,
    Rot90,
    Shift,
    blur_kernel,
)
from ulmed.core.augment_policy import (
    DEFINITIONS,
    FLIP_AXES,
    PRESETS,
    AugmentPolicy,
    Preset,
    check_dims,
    for_dims,
    resolve,
)
from ulmed.errors import ConfigError

__all__ = ["DEFINITIONS", "FLIP_AXES", "PRESETS", "AugmentPolicy", "DifferentiableAugment", "Preset",
           "build_augment", "for_dims"]

# kornia's affine warps announce a torch default that changed in 2018 on every call.
warnings.filterwarnings("ignore", message="Default grid_sample and affine_grid behavior", category=UserWarning)


class Affine(nn.Module):
    """kornia's random affine warp: rotation, scale per axis, translation in positions.

    Args:
        policy: ``rotate`` (degrees), ``scale`` and ``translate`` (positions) and ``p``.
        spatial_dims: 2 or 3.
        num_classes: Label values of 3D label maps (one-hot encoded for the warp).
    """

    def __init__(self, policy: AugmentPolicy, spatial_dims: int, num_classes: int) -> None:
        super().__init__()
        self.policy, self.spatial_dims, self.num_classes = policy, spatial_dims, num_classes
        self._warps: dict[tuple[int, ...], Any] = {}

    def _warp(self, spatial: tuple[int, ...], with_mask: bool) -> Any:
        """The kornia module for this image size (translation is a fraction of the size there)."""
        key = (*spatial, int(with_mask))
        if key not in self._warps:
            pol = self.policy
            lo, hi = 1 - pol.scale, 1 + pol.scale
            translate = tuple(pol.translate / n for n in reversed(spatial)) if pol.translate else None
            if self.spatial_dims == 2:
                warp = K.RandomAffine(degrees=pol.rotate, translate=translate,
                                      scale=(lo, hi, lo, hi) if pol.scale else None, p=pol.p)
                if with_mask:
                    warp = K.AugmentationSequential(warp, data_keys=["input", "mask"])
            else:
                warp = K.RandomAffine3D(degrees=pol.rotate, translate=translate,
                                        scale=((lo, hi),) * 3 if pol.scale else None, p=pol.p)
            self._warps[key] = warp
        return self._warps[key]

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> Pair:
        warp = self._warp(tuple(x.shape[2:]), mask is not None)
        if mask is None:
            return warp(x), None
        if self.spatial_dims == 2:
            x, moved = warp(x, mask.to(x.dtype))
            return x, moved.round().to(mask.dtype)
        c = x.shape[1]
        one_hot = torch.nn.functional.one_hot(mask[:, 0].long(), self.num_classes).movedim(-1, 1).to(x.dtype)
        warped = warp(torch.cat([x, one_hot], dim=1))
        return warped[:, :c], warped[:, c:].argmax(1, keepdim=True).to(mask.dtype)


def _geometric(policy: AugmentPolicy, spatial_dims: int, num_classes: int) -> list[nn.Module]:
    """The geometric steps of ``policy``, in the evaluation's order (image and mask together)."""
    if policy.nnunet:
        return [NnUNetStep(spatial_dims)]  # nnU-Net's whole pipeline, its intensity steps included
    steps: list[nn.Module] = []
    if policy.flips:
        steps.append(Flip(FLIP_AXES[spatial_dims]))
    if policy.rot90:
        steps.append(Rot90(policy.p))
    if policy.shift >= 1:
        steps.append(Shift(int(round(policy.shift)), policy.p))
    if policy.rotate or policy.scale or policy.translate:
        steps.append(Affine(policy, spatial_dims, num_classes))
    if policy.elastic:
        steps.append(Elastic(policy.elastic, policy.elastic_sigma, policy.p_elastic, spatial_dims))
    return steps


def _photometric(policy: AugmentPolicy) -> list[nn.Module]:
    """The photometric steps of ``policy`` (image only), in the evaluation's order."""
    p = policy.p
    steps: list[nn.Module] = []
    if policy.brightness or policy.contrast:
        steps.append(BrightnessContrast(policy.brightness, policy.contrast, p))
    if policy.gamma:
        steps.append(K.RandomGamma((1 - policy.gamma, 1 + policy.gamma), p=p))
    if policy.blur:
        k = blur_kernel(policy.blur)
        steps.append(K.RandomGaussianBlur((k, k), (0.1, max(policy.blur, 0.1)), p=p))
    if policy.noise:
        steps.append(Noise(policy.noise_min, policy.noise, policy.p_noise))
    if policy.jpeg:
        steps.append(GreyJPEG(policy.jpeg, p))
    return steps


class DifferentiableAugment(nn.Module):
    """Random augmentation of a batch and its targets, differentiable in the images.

    Args:
        policy: The transformations (an :class:`AugmentPolicy`, preset name or mapping); a
            preset is taken as its definition for ``spatial_dims``.
        spatial_dims: 2 or 3.
        num_classes: Number of label values of segmentation targets (3D warps one-hot
            encode them); unused for class labels.

    Call with ``(images (B, C, *spatial), targets)``: targets are masks/label maps
    ``(B, K, *spatial)`` (moved with the image) or class labels ``(B,)`` (unchanged).
    Returns ``(images, targets)`` of the same shapes, images clipped to [0, 1].
    """

    def __init__(
        self, policy: AugmentPolicy | str | Mapping[str, Any], spatial_dims: int, num_classes: int = 2
    ) -> None:
        super().__init__()
        check_dims(spatial_dims)
        if num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
        self.policy = resolve(AugmentPolicy.from_spec(policy), spatial_dims)
        if self.policy.jpeg and spatial_dims == 3:
            raise ConfigError("JPEG is a 2D codec; set jpeg=0 for volumes")
        self.spatial_dims = spatial_dims
        self.num_classes = num_classes
        self.geometric = nn.ModuleList(_geometric(self.policy, spatial_dims, num_classes))
        self.photometric = nn.ModuleList(_photometric(self.policy))

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment ``images`` (and masks in ``targets``) with fresh random parameters."""
        if images.dim() != self.spatial_dims + 2:
            raise ConfigError(f"expected {self.spatial_dims}D images (B, C, *spatial), got shape {tuple(images.shape)}")
        is_mask = targets.dim() == images.dim()
        x, mask = images, (targets if is_mask else None)
        for step in self.geometric:
            x, mask = step(x, mask)
        if len(self.photometric):
            x = self._photometric(x)
        return x.clamp(0.0, 1.0), (mask if is_mask and mask is not None else targets)

    def _photometric(self, x: torch.Tensor) -> torch.Tensor:
        """Photometric steps on 2D planes (a volume's slices as channels)."""
        shape = x.shape
        flat = x.reshape(shape[0], -1, *shape[-2:]) if self.spatial_dims == 3 else x
        for step in self.photometric:
            flat = step(flat)
        return flat.reshape(shape)


def build_augment(
    policy: AugmentPolicy | str | Mapping[str, Any] | None, spatial_dims: int, num_classes: int = 2
) -> DifferentiableAugment | None:
    """A :class:`DifferentiableAugment` of the policy's definition for ``spatial_dims``, or None for the identity."""
    pol = for_dims(AugmentPolicy.from_spec(policy), spatial_dims)
    if pol.is_identity:
        return None
    return DifferentiableAugment(pol, spatial_dims, num_classes)
