"""The evaluation's trainer augmentation: the definitions of :mod:`ulmed.core.augment_policy` on numpy samples.

The defenses ``augmentation`` (preset ``standard``), ``flip_jitter`` and ``aug-<part>``
(:mod:`ulmed.eval.defenses`) are :class:`Augmenter` objects. In 2D an albumentations
pipeline moves image and mask together: HorizontalFlip and VerticalFlip, RandomRotate90
(square images only, so shapes stay fixed), Affine (shifts, then rotation/scale),
ElasticTransform, RandomBrightnessContrast and GaussNoise. In 3D (albumentations is 2D
only) MONAI's dictionary transforms move image and label map together (RandFlipd along
:data:`~ulmed.core.augment_policy.FLIP_AXES`, RandAffined and Rand3DElasticd, padding
"border"; images interpolated linearly, label maps by nearest neighbour), then
brightness/contrast ``x * a + b`` and Gaussian noise in numpy. The ``nnunet`` preset (the
``nnunet-aug`` defense: nnU-Net v2's augmentation) runs the torch steps of
:mod:`ulmed.core.augment_nnunet` in 2D and 3D, which reproduce batchgeneratorsv2's transforms
(batchgeneratorsv2 itself is no dependency of ulmed). The kornia executor of the same
definitions is :class:`ulmed.core.augment.DifferentiableAugment`.

All randomness comes from the ``rng`` the training loop passes, so a seeded run is
reproducible. Per sample, albumentations gets one numpy and one Python generator drawn from
``rng`` and shared by all its steps, so each step draws its own numbers from one stream:
``Compose.set_random_seed`` would give every step a generator of the same seed, and steps of
equal probability would then fire together (albumentations 2.0; horizontal and vertical flip
came both or neither). MONAI's ``Compose.set_random_state`` already derives a different seed
per step. Images are clipped to [0, 1].
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import albumentations as A
import numpy as np
import torch

from ulmed.core.augment_nnunet import augment_sample
from ulmed.core.augment_policy import (
    FLIP_AXES,
    NNUNET,
    PART_FIELDS,
    AugmentPolicy,
    NnUNetAugment,
    Preset,
    for_dims,
    nnunet_steps,
    part_policy,
)
from ulmed.errors import ConfigError

#: The parts of the 2D definition (``aug-<part>``), by name, with the definition's settings.
PARTS: dict[str, AugmentPolicy] = {name: part_policy(name) for name in PART_FIELDS}
#: albumentations' flip along each spatial axis of an image (axis 1, horizontal, comes first).
_ALBUMENTATIONS_FLIP = {1: A.HorizontalFlip, 0: A.VerticalFlip}


def _refuse(policy: AugmentPolicy, names: tuple[str, ...], where: str) -> None:
    used = [n for n in names if getattr(policy, n)]
    if used:
        raise ConfigError(f"the evaluation's {where}trainer augmentation has no {', '.join(used)}; "
                          "these are for the optimisation's augmentation only")


def albumentations_steps(policy: AugmentPolicy, square: bool) -> list[Any]:
    """The 2D definition ``policy`` as albumentations transforms, in order.

    Args:
        policy: A 2D policy.
        square: Whether the images have equal sides (90-degree rotations only then).
    """
    _refuse(policy, ("translate", "gamma", "blur", "jpeg"), "2D ")
    steps: list[Any] = []
    if policy.flips:
        steps += [_ALBUMENTATIONS_FLIP[axis](p=0.5) for axis in sorted(FLIP_AXES[2], reverse=True)]
    if policy.rot90 and square:
        steps.append(A.RandomRotate90(p=policy.p))
    if policy.shift >= 1:
        s = int(round(policy.shift))
        steps.append(A.Affine(translate_px=(-s, s), p=policy.p))
    if policy.rotate or policy.scale:
        warp: dict[str, Any] = {}
        if policy.rotate:
            warp["rotate"] = (-policy.rotate, policy.rotate)
        if policy.scale:
            warp["scale"] = (1 - policy.scale, 1 + policy.scale)
        steps.append(A.Affine(**warp, p=policy.p))
    if policy.elastic:
        steps.append(A.ElasticTransform(alpha=policy.elastic, sigma=policy.elastic_sigma, p=policy.p_elastic))
    if policy.brightness or policy.contrast:
        steps.append(A.RandomBrightnessContrast(brightness_limit=policy.brightness, contrast_limit=policy.contrast,
                                                p=policy.p))
    if policy.noise:
        steps.append(A.GaussNoise(std_range=(policy.noise_min, policy.noise), p=policy.p_noise))
    return steps


def monai_steps(policy: AugmentPolicy) -> list[Any]:
    """The geometric part of the 3D definition ``policy`` as MONAI dictionary transforms (keys image, label)."""
    from monai.transforms import Rand3DElasticd, RandAffined, RandFlipd

    _refuse(policy, ("rot90", "shift", "gamma", "blur", "jpeg"), "3D ")
    keys, modes = ["image", "label"], ("bilinear", "nearest")  # no label: class targets
    steps: list[Any] = []
    if policy.flips:
        steps += [RandFlipd(keys, prob=0.5, spatial_axis=axis, allow_missing_keys=True) for axis in FLIP_AXES[3]]
    if policy.rotate or policy.scale or policy.translate:
        steps.append(RandAffined(keys, prob=policy.p, rotate_range=(np.deg2rad(policy.rotate),) * 3,
                                 scale_range=(policy.scale,) * 3, translate_range=(policy.translate,) * 3, mode=modes,
                                 padding_mode="border", allow_missing_keys=True))
    if policy.elastic:
        sigma, alpha = policy.elastic_sigma, policy.elastic
        steps.append(Rand3DElasticd(keys, sigma_range=(sigma, sigma), magnitude_range=(alpha, alpha),
                                    prob=policy.p_elastic, mode=modes, padding_mode="border", allow_missing_keys=True))
    return steps


def _is_mask(image: np.ndarray, target: Any) -> bool:
    return isinstance(target, np.ndarray) and target.shape == image.shape[1:]


class Augmenter:
    """Per-sample augmentation of one definition for 2D (albumentations) and 3D (MONAI, numpy) samples.

    Args:
        policy: A preset name (default ``standard``, the ``augmentation`` defense), a mapping
            or an :class:`AugmentPolicy`; a preset is taken as its definition for the
            dimension of each sample.
    """

    def __init__(self, policy: AugmentPolicy | str | Mapping[str, Any] = Preset.STANDARD) -> None:
        self.policy = AugmentPolicy.from_spec(policy)
        _refuse(self.policy, ("gamma", "blur", "jpeg"), "")
        self._compose: dict[bool, A.Compose] = {}
        self._compose_3d: Any = None

    def _pipeline(self, square: bool) -> A.Compose:
        if square not in self._compose:
            self._compose[square] = A.Compose(albumentations_steps(for_dims(self.policy, 2), square))
        return self._compose[square]

    def nnunet_params(self, spatial_dims: int) -> NnUNetAugment:
        """nnU-Net's augmentation parameters of the ``nnunet`` preset for ``spatial_dims``."""
        return NNUNET[spatial_dims]

    def __call__(self, image: np.ndarray, target: Any, rng: np.random.Generator) -> tuple[np.ndarray, Any]:
        """Augment one sample; ``target`` is a mask of the image's spatial shape or a class index."""
        if self.policy.nnunet and image.ndim in (3, 4):
            image, target = _augment_nnunet(image, target, rng, self.nnunet_params(image.ndim - 1))
        elif image.ndim == 3:
            image, target = self._augment_2d(image, target, rng)
        elif image.ndim == 4:
            image, target = self._augment_3d(image, target, rng)
        else:
            raise ConfigError(f"augment expects an image (C, H, W) or (C, D, H, W), got shape {image.shape}")
        return np.clip(image, 0.0, 1.0).astype(np.float32), target

    def _augment_2d(self, image: np.ndarray, target: Any, rng: np.random.Generator) -> tuple[np.ndarray, Any]:
        compose = self._pipeline(image.shape[1] == image.shape[2])
        seed = int(rng.integers(2**63))
        compose.set_random_state(np.random.default_rng(seed), random.Random(seed))  # one stream for all steps
        hwc = np.ascontiguousarray(np.moveaxis(image, 0, -1), dtype=np.float32)
        if _is_mask(image, target):
            if target.min() < 0 or target.max() > 255:
                raise ConfigError("masks for augmentation must hold labels 0..255")
            out = compose(image=hwc, mask=target.astype(np.uint8))
            target = out["mask"].astype(target.dtype)
        else:
            out = compose(image=hwc)
        return np.moveaxis(out["image"], -1, 0), target

    def _geometric_3d(self) -> Any:
        if self._compose_3d is None:
            from monai.transforms import Compose

            self._compose_3d = Compose(monai_steps(for_dims(self.policy, 3)))
        return self._compose_3d

    def _augment_3d(self, image: np.ndarray, target: Any, rng: np.random.Generator) -> tuple[np.ndarray, Any]:
        policy, is_mask = for_dims(self.policy, 3), _is_mask(image, target)
        compose = self._geometric_3d()
        if compose.transforms:
            compose.set_random_state(seed=int(rng.integers(2**31)))
            data = {"image": image.astype(np.float32)}
            if is_mask:
                data["label"] = target[None].astype(np.float32)
            out = compose(data)
            image = np.asarray(out["image"], dtype=np.float32)
            if is_mask:
                target = np.rint(np.asarray(out["label"])[0]).astype(target.dtype)
        b, c = policy.brightness, policy.contrast
        if (b or c) and rng.random() < policy.p:
            image = image * rng.uniform(1 - c, 1 + c) + rng.uniform(-b, b)
        if policy.noise and rng.random() < policy.p_noise:
            image = image + rng.normal(0.0, rng.uniform(policy.noise_min, policy.noise), size=image.shape)
        return np.ascontiguousarray(image), (np.ascontiguousarray(target) if is_mask else target)


def _augment_nnunet(image: np.ndarray, target: Any, rng: np.random.Generator,
                    params: NnUNetAugment) -> tuple[np.ndarray, Any]:
    """nnU-Net v2's augmentation of one sample (:func:`~ulmed.core.augment_nnunet.augment_sample`)."""
    is_mask = _is_mask(image, target)
    mask = torch.from_numpy(np.asarray(target, dtype=np.int64))[None] if is_mask else None
    with torch.no_grad():
        out, moved = augment_sample(torch.from_numpy(image.astype(np.float32)), mask, params, rng)
    return out.numpy(), (moved[0].numpy().astype(target.dtype) if is_mask else target)


class NnUNetAblation(Augmenter):
    """nnU-Net's augmentation with some of its steps switched off, to find which step removes a code.

    Args:
        off: Names of :data:`~ulmed.core.augment_policy.NNUNET_STEPS` never applied.
    """

    def __init__(self, off: Sequence[str]) -> None:
        super().__init__(Preset.NNUNET)
        self.off = tuple(off)
        self._params = {dims: nnunet_steps(params, self.off) for dims, params in NNUNET.items()}

    def nnunet_params(self, spatial_dims: int) -> NnUNetAugment:
        """The parameters with the steps of ``off`` at probability 0."""
        return self._params[spatial_dims]


class PartsAugmenter(Augmenter):
    """Some parts of the 2D definition only (see :data:`PARTS`), applied in the given order.

    Args:
        parts: Part names.
    """

    def __init__(self, parts: list[str]) -> None:
        super().__init__(Preset.NONE)
        unknown = [p for p in parts if p not in PARTS]
        if not parts or unknown:
            raise ConfigError(f"unknown augmentation parts {unknown or parts}; choose from {', '.join(PARTS)}")
        self.parts = parts

    def _pipeline(self, square: bool) -> A.Compose:
        if square not in self._compose:
            steps = [albumentations_steps(PARTS[p], square) for p in self.parts]
            self._compose[square] = A.Compose([s[0] if len(s) == 1 else A.Compose(s) for s in steps if s])
        return self._compose[square]

    def _augment_3d(self, image: np.ndarray, target: Any, rng: np.random.Generator) -> tuple[np.ndarray, Any]:
        raise ConfigError("aug-<part> defenses are 2D only; use augmentation or flip_jitter for volumes")
